"""`orchestrator dashboard`: a local, read-only web page that shows the current run live.

files.py reads project files without following symlinks; model.py turns the run's files into
one JSON snapshot (keeping the last good copy of each file); server.py serves the page in
static/ and the JSON on 127.0.0.1."""
