"""Readers of user files: prompts, A/B items, labelled text, preference pairs and trajectory
files. Each problem is one InputError naming the file and line."""
