"""Apps: the command line and the main job."""
