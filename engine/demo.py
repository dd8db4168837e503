"""`make demo`: a walkthrough of the drop-in commands in a throwaway git repository.

Every command is run through the bash shims in scripts/, exactly as an agent or a Makefile
would call them, and its stdout/exit code is shown.
"""

import os
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


def sh(cwd, *argv, show=True):
    cmd = list(argv)
    if cmd[0].endswith(".sh"):
        cmd[0] = os.path.join(SCRIPTS, cmd[0])
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if show:
        shown = " ".join(shlex.quote(a) for a in argv)
        print(f"$ {shown}")
        for line in proc.stdout.splitlines():
            print(f"  {line}")
        for line in proc.stderr.splitlines():
            print(f"  (stderr) {line}")
        if proc.returncode:
            print(f"  (exit {proc.returncode})")
    return proc


def make_repo(base):
    repo = os.path.join(base, "demo-app")
    os.makedirs(repo)
    env = dict(os.environ, GIT_AUTHOR_NAME="demo", GIT_AUTHOR_EMAIL="demo@example.com",
               GIT_COMMITTER_NAME="demo", GIT_COMMITTER_EMAIL="demo@example.com")
    for args in (["init", "-q", "-b", "main"],):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    with open(os.path.join(repo, "app.py"), "w") as fh:
        fh.write("def main():\n    return 'hello'\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "initial app"], cwd=repo, check=True, env=env)
    return repo


def walkthrough(repo):
    print("== state-transition: the /auto parallel path (CONTRACT.md §5.1) ==")
    sh(repo, "state-transition.sh", "work-type", "BACKEND", "api,db", "0.9")
    sh(repo, "state-transition.sh", "transition", "PARALLELIZE")
    sh(repo, "state-transition.sh", "transition", "INTEGRATE")
    sh(repo, "state-transition.sh", "transition", "INTEGRATE")
    print("\n== an illegal edge is refused, the file untouched; --force overrides and is journaled ==")
    sh(repo, "state-transition.sh", "transition", "SMART_VERIFY")
    sh(repo, "state-transition.sh", "transition", "--force", "SMART_VERIFY")
    sh(repo, "state-transition.sh", "transition", "COMPLETE")
    print("\n== checkpoints, tokens, hostile values stay data ==")
    sh(repo, "state-transition.sh", "checkpoint", "src/api.py", "first endpoint")
    sh(repo, "state-transition.sh", "tokens", "165000")
    sh(repo, "state-transition.sh", "tokens", "name[$(touch pwned)]")
    print(f"  pwned file exists: {os.path.exists(os.path.join(repo, 'pwned'))}")
    print("\n== called from a subdirectory: same .claude/ ==")
    os.makedirs(os.path.join(repo, "src", "deep"), exist_ok=True)
    sh(os.path.join(repo, "src", "deep"), "state-transition.sh", "state")
    print("\n== resume, history and the machine ==")
    sh(repo, "state-transition.sh", "resume")
    sh(repo, "state-transition.sh", "history")
    graph = sh(repo, "state-transition.sh", "graph", show=False).stdout.splitlines()
    print(f"$ state-transition.sh graph   ({len(graph)} lines of Mermaid; first 4:)")
    for line in graph[:4]:
        print(f"  {line}")


def main():
    keep = os.environ.get("DEMO_DIR")
    base = keep or tempfile.mkdtemp(prefix="orchestrator-demo-")
    os.makedirs(base, exist_ok=True)
    repo = make_repo(base)
    walkthrough(repo)
    print(f"\nDemo repository left at {repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
