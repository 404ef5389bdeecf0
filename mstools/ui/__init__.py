"""UI: plots, widgets, reports, audio and notebook set-up."""
