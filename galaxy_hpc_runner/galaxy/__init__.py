"""The Galaxy side: the job runner plugin (imports ``galaxy``) and its Galaxy-free helpers."""
