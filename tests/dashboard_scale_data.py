"""A synthetic progress file of N tasks, shaped like a real run's (engine/plan.py's groups of at
most `max_agents` tasks per dependency level, a third of the tasks depending on an earlier one
as bench/bench_scale.py plans them), caught in the middle: the groups before the current one
merged (a few failed or blocked), the current ones running / verifying / merging on four slots,
the rest pending. Used by tests/test_dashboard_scale.py and the browser test."""

import random

AGENTS = 4


def iso(t):
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def big_progress(n, seed=7, done_fraction=0.6, now=None):
    import time

    rng = random.Random(seed)
    ids = [f"t{i:05d}" for i in range(n)]
    deps = {}
    for i, t in enumerate(ids):
        d = []
        if i and rng.random() < 1 / 3:
            d.append(ids[rng.randrange(max(0, i - 50), i)])
            if rng.random() < 0.2:
                other = ids[rng.randrange(max(0, i - 200), i)]
                if other not in d:
                    d.append(other)
        deps[t] = d
    level = {}
    for t in ids:  # plan order is a topological order here
        level[t] = 1 + max((level[d] for d in deps[t]), default=0)
    groups, by_level = [], {}
    for t in ids:
        by_level.setdefault(level[t], []).append(t)
    for lv in sorted(by_level):
        members = by_level[lv]
        groups += [members[i:i + 5] for i in range(0, len(members), 5)]
    under_way = ["merging", "verifying", "executed", "running", "verifying", "running", "running", "running"]
    current = max(1, int(len(groups) * done_fraction))
    tasks = {}
    clock = 0.0  # seconds into the run; made timestamps ending now at the end
    slot_n = 0
    for g, members in enumerate(groups, 1):
        for t in members:
            e = {"status": "pending", "name": f"Task {t}: change module {t[1:]}", "branch": f"auto/{t}",
                 "group": g, "files": [f"src/m{t[1:]}.py"], "verify": f"python -m pytest -q tests/test_{t}.py"}
            if deps[t]:
                e["depends_on"] = list(deps[t])
            if g < current or (g == current and rng.random() < 0.4):
                tries = 1 + (rng.random() < 0.12)
                attempts = []
                for k in range(1, tries + 1):
                    slot_n += 1
                    took = round(rng.uniform(20, 180), 2)
                    attempts.append({"n": k, "kind": "agent", "slot": f"wt-{slot_n % AGENTS + 1}",
                                     "started_at": clock, "ended_at": clock + took, "exit_code": 0,
                                     "outcome": "executed", "cost_usd": round(took * 0.002, 4),
                                     "tokens_in": int(took * 900), "tokens_out": int(took * 60)})
                    clock += took / AGENTS
                roll = rng.random()
                status = "failed" if roll < 0.01 else "blocked" if roll < 0.013 else "merged"
                e.update(status=status, iterations=tries, attempts=attempts, started_at=attempts[0]["started_at"],
                         elapsed=round(sum(rng.uniform(20, 180) for _ in attempts), 2), qa_verified=status == "merged",
                         base_commit="%040x" % rng.getrandbits(160), test_result="passed" if status == "merged"
                         else "failed", completed_at=attempts[-1]["ended_at"])
                if status == "merged":
                    e["merged_commit"] = "%040x" % rng.getrandbits(160)
                else:
                    e["failure"] = "QA rejected it 2 times: AssertionError in tests/test_%s.py" % t
            elif under_way:  # the run's front: an agent on every slot, a few checks and a merge
                status = under_way.pop(0)
                slot = f"wt-{under_way.count('running') + 1 if status == 'running' else rng.randrange(AGENTS) + 1}"
                began = clock + rng.uniform(0, 30)
                e.update(status=status, iterations=1, started_at=began, slot=slot if status == "running" else None,
                         attempts=[{"n": 1, "kind": "agent", "slot": slot, "started_at": began,
                                    "ended_at": None if status == "running" else began + 30}])
            tasks[t] = e
    shift = (now or time.time()) - clock - 40

    def stamp(value):
        return iso(value + shift) if isinstance(value, float) else value

    for e in tasks.values():
        for field in ("started_at", "completed_at"):
            if field in e:
                e[field] = stamp(e[field])
        for a in e.get("attempts", ()):
            a["started_at"], a["ended_at"] = stamp(a["started_at"]), stamp(a["ended_at"])
    start = iso(shift)
    return {"plan_file": "/tmp/plan.yaml", "base": "main", "work_type": "BACKEND", "status": "running",
            "run_id": f"run-scale-{n}", "started_at": start, "total_groups": len(groups),
            "current_group": current, "concurrency": AGENTS, "tasks": tasks}


def write_progress(repo, n, **kw):
    """The progress file (and an EXECUTE state file) of a big run under REPO/.claude/."""
    import os

    import yaml

    data = big_progress(n, **kw)
    claude = os.path.join(str(repo), ".claude")
    os.makedirs(claude, exist_ok=True)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with open(os.path.join(claude, "auto-progress.yaml"), "w") as fh:
        yaml.dump(data, fh, Dumper=dumper, sort_keys=False, default_flow_style=False)
    with open(os.path.join(claude, "auto-state-machine.yaml"), "w") as fh:
        fh.write("current_state: EXECUTE\nprevious_state: PARALLELIZE\ncompleted_phases: [DECOMPOSE, PARALLELIZE]\n")
    with open(os.path.join(claude, "auto-context.yaml"), "w") as fh:
        fh.write(f"parallelization:\n  max_agents: {AGENTS}\n")
    return data
