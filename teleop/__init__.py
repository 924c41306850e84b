"""robopolicy.teleop: input devices, episode recorder and human intervention (issue #5)."""
