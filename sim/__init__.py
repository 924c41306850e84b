"""robopolicy.sim: MuJoCo tasks, scripted experts, vector envs and evaluation (issue #3)."""
