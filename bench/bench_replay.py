"""Replay of real history: 24 consecutive commits of a public Python project (boltons,
shipped as bench/data/replay/boltons.bundle, see its README.txt) run as 24 tasks through the
real CLI, `orchestrator run --all-groups`, one task per upstream commit (ids c01..c24, the
commit's subject as the description), 4 agents, `retry_on_failure` 15, `allow_empty` (a task
whose change is already in the base merges as such).

Two agents, both oracles that know their commit (TASK_ID -> commit through the JSON this
benchmark writes next to the plan: agents get only the engine's environment variables):

- patch: `git apply --3way` of its commit's diff onto whatever checkout it is given (the
  blobs the diff was made against are put in the repository first, so the three-way
  fallback can work), committed with the upstream message; exit 1 when it does not apply,
  like an agent that cannot make the change on the code it sees. A change already in the
  checkout: nothing to commit, exit 0.
- whole: writes every file its commit touches exactly as the commit has it (deletions
  deleted) and commits, so tasks that touch the same file really conflict when merged and
  the rebase and agent re-run paths run on real code. Where the checkout already holds a
  later replayed commit touching the file (a merged task, by its trailer), it writes the
  file as that later commit has it (which includes this change) instead of reverting it.

Both sleep `--work` seconds first (the agent's thinking; each attempt's real duration is
measured and logged by the agent itself) and add a `Replay-Task: cNN` trailer to their commit.

QA (`verify`, the same for both agents): every file the task's commit touches must be, at
the branch tip, exactly as upstream has it at the newest of this task and the replayed tasks
in the branch's history (by their trailers) that touch the file. So a change made on a base
that lacks an earlier commit's change to the same file is rejected (the file is not
upstream's), and so is one that reverts a later task already merged; a task needs nothing
else of the base.

Plans: perfect (files = each commit's files, depends_on = the last earlier commit touching
each of them), none (no files, no dependencies), partial (files for every other task, no
dependencies). Printed per scenario: merged tasks, agent attempts (from the progress file),
attempts per task, agent failures, QA rejections (and how many rejected branches the engine
rebased onto the moved base itself), merge conflicts and how each was resolved (a rebase
without the agent, or the agent again; from the journal), retries held back for the base to
move, the makespan against the lower bound max(critical path, total work / agents) (work:
each task's successful attempt as measured; the critical path over the perfect plan's
edges), and whether the final `main` tree equals upstream's (else the files that differ).
Baseline: each agent run once on the base, as the original skill's agents all started from
it, and every branch an agent made through `merge-branches` (CONTRACT.md 2.4: in order, a
conflicting branch refused).

    .venv/bin/python bench/bench_replay.py [--agent patch|whole|both] [--scenario perfect|none|partial|baseline]...
        [--agents 4] [--quick | --commits N] [--work 1.0] [--retries 15] [--timeout 900] [--engine DIR] [--keep]

About 2.5 minutes for everything on 2 cores with today's engine; --quick (12 commits, 0.5 s of
work) about 40 s. --engine runs another engine than this checkout's, e.g. an export of an
older commit (`git archive COMMIT | tar -x -C DIR`), for a before/after in the same run.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUNDLE = os.path.join(HERE, "data", "replay", "boltons.bundle")
TRAILER = "Replay-Task"
SCENARIOS = ("perfect", "none", "partial")
AGENTS = ("patch", "whole")
IDENTITY = ["-c", "user.name=replay-agent", "-c", "user.email=replay-agent@localhost"]


def git(cwd, *args, check=True, binary=False):
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=not binary)
    if check and proc.returncode:
        raise RuntimeError(f"git {' '.join(args)} (in {cwd}): exit {proc.returncode}: {proc.stderr!s:.500}")
    return proc if not check else (proc.stdout if binary else proc.stdout.strip())


# ------------------------------------------------------------------ the shipped history
def load_history(work, count):
    """The bundle as a bare repository, and the first COUNT replayed commits: for each its
    sha, message, files (A/M/D), the blob each file has there, and its diff (a file)."""
    upstream = os.path.join(work, "upstream.git")
    git(None, "clone", "-q", "--bare", BUNDLE, upstream)
    base = git(upstream, "rev-parse", "replay-base^{commit}")
    shas = git(upstream, "rev-list", "--reverse", "--first-parent", f"{base}..main").split()[:count]
    patches = os.path.join(work, "patches")
    os.makedirs(patches)
    order, tasks, touches = [], {}, {}
    for i, sha in enumerate(shas, 1):
        tid = f"c{i:02d}"
        status = {}
        for line in git(upstream, "diff-tree", "--no-commit-id", "-r", "--no-renames", "--name-status",
                        f"{sha}^", sha).splitlines():
            st, path = line.split("\t", 1)
            status[path] = st[0]
        blobs = {}
        for line in git(upstream, "ls-tree", sha, "--", *status).splitlines():
            meta, path = line.split("\t", 1)
            mode, _, blob = meta.split()
            blobs[path] = [blob, mode]
        before = {}
        for line in git(upstream, "ls-tree", f"{sha}^", "--", *status).splitlines():
            meta, path = line.split("\t", 1)
            before[path] = meta.split()[2]
        patch = os.path.join(patches, f"{tid}.diff")
        with open(patch, "wb") as fh:
            fh.write(git(upstream, "diff", "--full-index", "--binary", "--no-renames", f"{sha}^", sha, binary=True))
        tasks[tid] = {"sha": sha, "subject": git(upstream, "log", "-1", "--format=%s", sha),
                      "message": git(upstream, "log", "-1", "--format=%B", sha), "status": status,
                      "blobs": {p: blobs.get(p) for p in status}, "before": sorted(before.values()), "patch": patch}
        for path in status:
            touches.setdefault(path, []).append(tid)
        order.append(tid)
    return {"upstream": upstream, "base": base, "order": order, "tasks": tasks, "touches": touches,
            "tip_tree": git(upstream, "rev-parse", f"{shas[-1]}^{{tree}}")}


def perfect_deps(history):
    """{task: the last earlier task touching each of its files}: the perfect plan's edges."""
    deps = {}
    for tid in history["order"]:
        deps[tid] = sorted({prev for path in history["tasks"][tid]["status"]
                            for prev in [_last_before(history["touches"][path], tid)] if prev})
    return deps


def _last_before(touchers, tid):
    earlier = [t for t in touchers if t < tid]
    return earlier[-1] if earlier else None


def lower_bound(history, work, agents):
    """max(critical path over the perfect plan's edges, total work / agents)."""
    finish = {}
    deps = perfect_deps(history)
    for tid in history["order"]:
        finish[tid] = work[tid] + max((finish[d] for d in deps[tid]), default=0.0)
    return max(max(finish.values()), sum(work.values()) / agents)


# ------------------------------------------------------------------ a scenario
def write_config(sdir, history, work):
    config = dict(history, log=os.path.join(sdir, "attempts.jsonl"), work=work)
    path = os.path.join(sdir, "replay.json")
    with open(path, "w") as fh:
        json.dump(config, fh)
    return path


def self_command(*args):
    return " ".join(shlex.quote(a) for a in (sys.executable, os.path.abspath(__file__), *args))


def write_plan(sdir, history, scenario, kind, config):
    import yaml

    deps = perfect_deps(history)
    tasks = []
    for i, tid in enumerate(history["order"]):
        task = history["tasks"][tid]
        entry = {"id": tid, "description": task["subject"], "verify": self_command("_verify", config, tid),
                 "allow_empty": True}
        if scenario == "perfect" or (scenario == "partial" and i % 2 == 0):
            entry["files"] = sorted(task["status"])
        if scenario == "perfect" and deps[tid]:
            entry["depends_on"] = deps[tid]
        tasks.append(entry)
    plan = {"work_type": "BACKEND", "base": "main", "agent": self_command("_agent", kind, config), "tasks": tasks}
    path = os.path.join(sdir, "plan.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(plan, fh, sort_keys=False, allow_unicode=True, width=1000)
    return path


def make_repo(sdir, history, agents, retries):
    """A project at the replay's base (only the base: no upstream commit in reach)."""
    repo = os.path.join(sdir, "boltons")
    git(None, "init", "-q", "-b", "main", repo)
    git(repo, "fetch", "-q", history["upstream"], "refs/tags/replay-base")
    git(repo, "reset", "-q", "--hard", "FETCH_HEAD")
    git(repo, "config", "user.name", "replay")
    git(repo, "config", "user.email", "replay@localhost")
    os.makedirs(os.path.join(repo, ".claude"))
    with open(os.path.join(repo, ".claude", "auto-context.yaml"), "w") as fh:
        fh.write(f"parallelization:\n  max_agents: {agents}\n  min_tasks: 1\n  retry_on_failure: {retries}\n")
    return repo


def read_attempts(path):
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def run_scenario(work_dir, history, scenario, kind, agents, retries, work, engine=ROOT, timeout=900):
    import yaml

    sdir = os.path.join(work_dir, f"{kind}-{scenario}")
    os.makedirs(sdir)
    config = write_config(sdir, history, work)
    repo = make_repo(sdir, history, agents, retries)
    plan = write_plan(sdir, history, scenario, kind, config)
    env = dict(os.environ, PYTHONPATH=engine)
    with open(os.path.join(sdir, "orchestrator.out"), "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli.orchestrator", "run", "--all-groups", plan],
                                cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # a run that hangs: stopped as Ctrl-C would (it stops its agents)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = "timeout"
        makespan = time.perf_counter() - start
    with open(os.path.join(repo, ".claude", "auto-progress.yaml")) as fh:
        progress = yaml.safe_load(fh) or {}
    journal = []
    with open(os.path.join(repo, ".claude", "auto-journal.jsonl")) as fh:
        for line in fh:
            try:
                journal.append(json.loads(line))
            except ValueError:
                pass
    return summarize(history, scenario, kind, agents, repo, progress, journal,
                     read_attempts(os.path.join(sdir, "attempts.jsonl")), makespan, code, sdir)


def summarize(history, scenario, kind, agents, repo, progress, journal, attempts, makespan, code, sdir):
    order = history["order"]
    tasks = progress.get("tasks") or {}
    merged = [t for t in order if (tasks.get(t) or {}).get("status") == "merged"]
    records = [a for t in order for a in (tasks.get(t) or {}).get("attempts") or []]
    events = [e for e in journal if e.get("event") == "task"]

    def count(trigger, src=None):
        return sum(1 for e in events if e.get("trigger") == trigger and (src is None or e.get("src") == src))

    failures = {}
    for t in order:
        entry = tasks.get(t) or {}
        if entry.get("status") != "merged":
            reason = entry.get("failure") or entry.get("status") or "?"
            key = ("retries exhausted" if "retries exhausted" in reason else
                   "dependency failed, not started" if "not started" in reason else reason[:60])
            failures.setdefault(key, []).append(t)
    # work per task: its successful attempt as measured by the agent (the fastest, if several)
    done = {}
    for a in attempts:
        if a["outcome"] in ("committed", "present"):
            done[a["task"]] = min(done.get(a["task"], 1e9), a["end"] - a["start"])
    typical = sorted(done.values())[len(done) // 2] if done else 0.0
    work = {t: done.get(t, typical) for t in order}
    bound = lower_bound(history, work, agents)
    odd = {}
    for a in attempts:
        if a["outcome"] not in ("committed", "present", "does not apply"):
            odd[a["outcome"]] = odd.get(a["outcome"], 0) + 1
    with open(os.path.join(sdir, "orchestrator.out"), errors="replace") as fh:
        waits = sum(1 for line in fh if ": waits for " in line)  # (an engine that holds a retry back says so)
    tree = git(repo, "rev-parse", "main^{tree}")
    differ = tree_difference(history, repo)
    return {
        "scenario": scenario, "agent": kind, "tasks": len(order), "merged": len(merged),
        "attempts": sum(1 for a in records if a.get("kind", "agent") == "agent"),
        "agent_failures": sum(1 for a in records if a.get("kind", "agent") == "agent" and a.get("outcome") == "failed"),
        "rejects": count("reject") + count("fail", "verifying"), "rejects_rebased": count("rebased", "rejected"),
        "conflicts": count("conflict") + count("fail", "merging"), "by_rebase": count("rebased", "conflicted"),
        "by_agent": count("start", "conflicted"), "waits": waits,
        "agent_seconds": round(sum(a["end"] - a["start"] for a in attempts), 1),
        "stale_starts": sum(1 for a in attempts if a.get("attempt", 1) > 1 and a.get("behind")),
        "dirty_starts": sum(1 for a in attempts if a.get("dirty")),
        "makespan": makespan, "bound": bound, "tree_equal": tree == history["tip_tree"],
        "failures": failures, "differ": differ, "odd": odd, "exit": code, "dir": sdir,
    }


def tree_difference(history, repo):
    """The paths where `main` differs from upstream's last replayed commit."""
    def listing(*args):
        return {line.split("\t", 1)[1]: line.split()[2] for line in git(*args).splitlines()}

    ours = listing(repo, "ls-tree", "-r", "main")
    theirs = listing(history["upstream"], "ls-tree", "-r", history["tip_tree"])
    return sorted(p for p in set(ours) | set(theirs) if ours.get(p) != theirs.get(p))


def run_baseline(work_dir, history, kind, agents, engine=ROOT):
    """Each agent once on the base (no orchestrator), then `merge-branches main auto/c01 ...`."""
    sdir = os.path.join(work_dir, f"{kind}-baseline")
    os.makedirs(sdir)
    config = write_config(sdir, history, 0.0)
    repo = make_repo(sdir, history, agents, 0)
    base = git(repo, "rev-parse", "main")
    paths = {}
    for tid in history["order"]:
        paths[tid] = os.path.join(sdir, "wt", tid)
        git(repo, "worktree", "add", "-q", "-b", f"auto/{tid}", paths[tid], base)

    def one(tid):
        env = dict(os.environ, TASK_ID=tid, TASK_DESCRIPTION=history["tasks"][tid]["subject"], WORKTREE=paths[tid],
                   BRANCH=f"auto/{tid}", BASE="main", QA_FEEDBACK="", TASK_ATTEMPT="1", TASK_FILES="",
                   TASK_VERIFY="", ORCHESTRATOR_ROOT=repo)
        agent = subprocess.run(shlex.split(self_command("_agent", kind, config)), cwd=paths[tid], env=env,
                               capture_output=True)
        verify = subprocess.run(shlex.split(self_command("_verify", config, tid)), cwd=paths[tid],
                                capture_output=True)
        return agent.returncode == 0, verify.returncode == 0

    start = time.perf_counter()
    with ThreadPoolExecutor(agents) as pool:
        results = dict(zip(history["order"], pool.map(one, history["order"])))
    for tid in history["order"]:
        git(repo, "worktree", "remove", "--force", paths[tid])
    branches = [f"auto/{t}" for t in history["order"]
                if results[t][0] and git(repo, "rev-list", "--count", f"{base}..auto/{t}") != "0"]
    for t in history["order"]:
        if f"auto/{t}" not in branches:
            git(repo, "branch", "-q", "-D", f"auto/{t}")
    proc = subprocess.run([sys.executable, "-m", "engine.cli.merge_branches", "--json", "main", *branches],
                          cwd=repo, env=dict(os.environ, PYTHONPATH=engine), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    report = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    merged = report.get("merged") or []
    return {"agent": kind, "tasks": len(history["order"]), "agent_ok": sum(ok for ok, _ in results.values()),
            "qa_ok": sum(qa for _, qa in results.values()), "branches": len(branches), "merged": len(merged),
            "failed": [f["branch"] for f in report.get("failed") or []],
            "tree_equal": git(repo, "rev-parse", "main^{tree}") == history["tip_tree"], "seconds": elapsed,
            "differ": tree_difference(history, repo),
            "dir": sdir}


# ------------------------------------------------------------------ the agents and QA
def _git_out(*args, env=None):
    proc = subprocess.run(["git", *args], capture_output=True, text=True, env=env)
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def agent_main(kind, config_path):
    """The task's agent (cwd: its worktree). Exit 0 with the change committed (or already
    there), 1 when it cannot make the change on this checkout."""
    with open(config_path) as fh:
        cfg = json.load(fh)
    tid = os.environ["TASK_ID"]
    task = cfg["tasks"][tid]
    start = time.time()
    head = _git_out("rev-parse", "HEAD")[1]
    base_tip = _git_out("rev-parse", f"refs/heads/{os.environ.get('BASE') or 'main'}")[1]
    dirty = bool(_git_out("status", "--porcelain", "--untracked-files=no")[1])
    time.sleep(float(cfg["work"]))
    outcome, detail = (apply_patch if kind == "patch" else write_files)(cfg, tid, task)
    if outcome == "changed":
        with tempfile.NamedTemporaryFile("w", delete=False, suffix=".msg") as fh:
            fh.write(task["message"])
        code, out, err = _git_out(*IDENTITY, "commit", "-q", "--no-verify", "-F", fh.name,
                                  "--trailer", f"{TRAILER}: {tid}")
        os.unlink(fh.name)
        outcome, detail = ("committed", "") if code == 0 else ("commit failed", (err + " " + out)[-300:])
    end = time.time()
    record = {"task": tid, "attempt": int(os.environ.get("TASK_ATTEMPT") or 1), "agent": kind, "start": start,
              "end": end, "outcome": outcome, "head": head, "base_tip": base_tip,
              "behind": _git_out("merge-base", "--is-ancestor", base_tip, head)[0] != 0,
              "dirty": dirty, "worktree": os.path.basename(os.getcwd())}
    with open(cfg["log"], "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(f"replay {kind} agent {tid} attempt {record['attempt']} on {head[:10]} (base tip {base_tip[:10]}): "
          f"{outcome}{': ' + detail if detail else ''}")
    return 0 if outcome in ("committed", "present") else 1


def apply_patch(cfg, tid, task):
    if _git_out("apply", "--reverse", "--check", task["patch"])[0] == 0:
        return "present", "the change is already in this checkout"
    # the blobs the diff was made against, so that the three-way fallback can use them
    blobs = subprocess.run(["git", f"--git-dir={cfg['upstream']}", "cat-file", "--batch"], capture_output=True,
                           check=True, input="".join(b + "\n" for b in task["before"]).encode()).stdout
    for blob in task["before"]:
        header, blobs = blobs.split(b"\n", 1)
        size = int(header.split()[2])
        subprocess.run(["git", "hash-object", "-w", "--stdin"], input=blobs[:size], capture_output=True, check=True)
        blobs = blobs[size + 1:]
    code, out, err = _git_out("apply", "--3way", task["patch"])
    if code != 0:
        _git_out("reset", "-q", "--hard")  # leave the checkout as found
        return "does not apply", (err or out)[-400:]
    if _git_out("diff", "--cached", "--quiet")[0] == 0:  # a three-way merge found the change already made
        return "present", "the change is already in this checkout (three-way)"
    return "changed", ""


def write_files(cfg, tid, task):
    target = newest_versions(cfg, tid, task)
    for path, (newest, blob) in target.items():
        if blob is None:
            if os.path.lexists(path):
                _git_out("rm", "-q", "-f", "--", path)
            continue
        if os.path.isfile(path) and _git_out("hash-object", "--", path)[1] == blob[0]:
            continue
        data = subprocess.run(["git", f"--git-dir={cfg['upstream']}", "cat-file", "blob", blob[0]],
                              capture_output=True, check=True).stdout
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        with open(path, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o755 if blob[1] == "100755" else 0o644)
        _git_out("add", "--", path)
    if _git_out("diff", "--cached", "--quiet")[0] == 0:
        return "present", "every file already as upstream has it"
    return "changed", ""


def newest_versions(cfg, tid, task, rev="HEAD"):
    """{path: (task, [blob, mode] or None)} for each file TID's commit touches: upstream's
    version at the newest of TID and the replayed tasks in REV's history (their trailers)
    that touch it. The whole-file agent writes these; QA expects them."""
    present = set(_git_out("log", f"--format=%(trailers:key={TRAILER},valueonly)", f"{cfg['base']}..{rev}")[1].split())
    target = {}
    for path in task["status"]:
        newest = max(t for t in cfg["touches"][path] if t == tid or t in present)
        target[path] = (newest, cfg["tasks"][newest]["blobs"][path])
    return target


def verify_main(config_path, tid):
    """QA: each file TID's commit touches is, at the branch tip, as upstream has it at the
    newest of TID and the replayed tasks in the branch's history that touch it."""
    with open(config_path) as fh:
        cfg = json.load(fh)
    task = cfg["tasks"][tid]
    actual = {}
    for line in _git_out("ls-tree", "HEAD", "--", *task["status"])[1].splitlines():
        meta, path = line.split("\t", 1)
        actual[path] = meta.split()[2]
    wrong = []
    for path, (newest, expected) in newest_versions(cfg, tid, task).items():
        if (expected[0] if expected else None) != actual.get(path):
            wrong.append(f"{path} is not as upstream has it at {newest} "
                         f"({'deleted' if not expected else expected[0][:10]}; here "
                         f"{actual.get(path, 'absent')[:10]})")
    for line in wrong:
        print(line)
    print("ok" if not wrong else f"REJECTED: {len(wrong)} file(s) differ")
    return 1 if wrong else 0


# ------------------------------------------------------------------ the table
def print_results(rows, baselines, agents):
    head = ("agent", "plan", "merged", "tree", "att", "att/t", "fail", "QA-", "QA-rb", "confl", "c-rb", "c-agt",
            "waits", "makespan", "bound", "ratio")
    widths = (6, 8, 7, 4, 4, 5, 4, 4, 5, 5, 4, 5, 5, 8, 7, 6)
    print(" ".join(f"{h:<{w}}" if i < 2 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(head, widths))))
    for r in rows:
        cells = (r["agent"], r["scenario"], f"{r['merged']}/{r['tasks']}", "yes" if r["tree_equal"] else "NO",
                 r["attempts"], f"{r['attempts'] / r['tasks']:.2f}", r["agent_failures"], r["rejects"],
                 r["rejects_rebased"], r["conflicts"], r["by_rebase"], r["by_agent"], r["waits"],
                 f"{r['makespan']:.1f}s", f"{r['bound']:.1f}s", f"{r['makespan'] / r['bound']:.2f}x")
        print(" ".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))))
    for r in rows:
        extra = []
        if r["failures"]:
            extra.append("; ".join(f"{k}: {', '.join(v)}" for k, v in r["failures"].items()))
        if r["differ"]:
            extra.append(f"main differs from upstream in {', '.join(r['differ'])}")
        if r["dirty_starts"]:
            extra.append(f"{r['dirty_starts']} attempt(s) started on a dirty checkout")
        if r["stale_starts"]:
            extra.append(f"{r['stale_starts']} retries started behind the base")
        if r["odd"]:
            extra.append("agent outcomes other than committed/present/does not apply: "
                         + ", ".join(f"{k} x{v}" for k, v in r["odd"].items()))
        extra.append(f"agent time {r['agent_seconds']}s, exit {r['exit']}")
        print(f"  {r['agent']}/{r['scenario']}: " + " | ".join(extra))
    for b in baselines:
        print(f"{b['agent']:<6} {'baseline':<8} {b['merged']:>3}/{b['tasks']:<3} "
              f"{'yes' if b['tree_equal'] else 'NO':>4}   merge-branches over the {b['branches']} branches its agents "
              f"made on the base ({b['qa_ok']} pass QA there), {b['seconds']:.1f}s")
        if b["failed"] or b["differ"]:
            print(f"  {b['agent']}/baseline: refused (conflicts): {', '.join(b['failed']) or '-'}"
                  + (f" | main differs from upstream in {', '.join(b['differ'])}" if b["differ"] else ""))
    print("(att: agent attempts, from the progress file; fail: agent failures; QA-: QA rejections, QA-rb: of "
          "them, rejected work rebased onto the moved base without the agent; confl: merge conflicts, c-rb: "
          "resolved by a rebase without the agent, c-agt: by the agent again; waits: retries held back for the base "
          f"to move; bound: max(critical path, work / {agents}), each task's work its successful attempt as measured)")


def main(argv=()):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", choices=AGENTS + ("both",), default="both")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS + ("baseline",),
                        help="repeatable; default: all three plans and the baseline")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--commits", type=int, default=24)
    parser.add_argument("--quick", action="store_true", help="the first 12 commits, 0.5 s of agent work")
    parser.add_argument("--work", type=float, default=None, help="seconds each agent attempt sleeps (default 1)")
    parser.add_argument("--retries", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the scenarios' directories (printed)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a run is stopped as hung")
    parser.add_argument("--engine", default=ROOT, help="the checkout whose engine runs (default: this one), e.g. "
                        "an export of an older commit: git archive COMMIT | tar -x -C DIR")
    args = parser.parse_args(list(argv))
    commits = 12 if args.quick and args.commits == 24 else args.commits
    work = args.work if args.work is not None else (0.5 if args.quick else 1.0)
    scenarios = args.scenario or list(SCENARIOS) + ["baseline"]
    kinds = AGENTS if args.agent == "both" else (args.agent,)
    work_dir = tempfile.mkdtemp(prefix="bench-replay-")
    try:
        history = load_history(work_dir, commits)
        engine = os.path.abspath(args.engine)
        print(f"engine: {engine}" + (f" ({git(engine, 'log', '-1', '--format=%h %s')[:60]})"
                                     if os.path.isdir(os.path.join(engine, ".git")) else ""))
        print(f"boltons, {len(history['order'])} commits replayed as tasks, {args.agents} agents, "
              f"{work:g} s of agent work per attempt, retry_on_failure {args.retries}")
        rows, baselines = [], []
        for kind in kinds:
            for scenario in scenarios:
                if scenario == "baseline":
                    baselines.append(run_baseline(work_dir, history, kind, args.agents, args.engine))
                else:
                    rows.append(run_scenario(work_dir, history, scenario, kind, args.agents, args.retries, work,
                                             args.engine, args.timeout))
        print_results(rows, baselines, args.agents)
    finally:
        if args.keep:
            print(f"(kept: {work_dir})")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_agent"]:
        sys.exit(agent_main(sys.argv[2], sys.argv[3]))
    if sys.argv[1:2] == ["_verify"]:
        sys.exit(verify_main(sys.argv[2], sys.argv[3]))
    main(sys.argv[1:])
