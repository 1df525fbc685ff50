"""HTTP routes: thin, parse → job → pipeline → render."""
