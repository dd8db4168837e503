"""The mandatory-skills table (CONTRACT.md §3.3), cell for cell, plus the pipeline's states.

A row is either one list for every work type, or a dict keyed by work type with `None` for
"every other type" (DOCUMENTATION, DOCUMENTS, INTEGRATION, TESTING, CREATIVE, "", unknown).
Matching is exact and case-sensitive, as in the original.
"""

SP = "superpowers:"

_TABLE = {
    "IDLE": [],
    "DETECT": ["project-detector", "work-type-classifier"],
    "CLASSIFY": [],
    "PLAN": {
        "FRONTEND": [SP + "brainstorming", SP + "writing-plans", "frontend-design"],
        "BACKEND": [SP + "brainstorming", SP + "writing-plans", "architecture-patterns"],
        "FULLSTACK": [SP + "brainstorming", SP + "writing-plans", "frontend-design", "architecture-patterns"],
        "RESEARCH": [SP + "brainstorming"],
        None: [SP + "brainstorming", SP + "writing-plans"],
    },
    "PARALLELIZE": ["task-decomposer", "parallel-orchestrator"],
    "EXECUTE": {
        "FRONTEND": [SP + "test-driven-development", "frontend-design"],
        "RESEARCH": [],
        None: [SP + "test-driven-development"],
    },
    "INTEGRATE": [],
    "REVIEW": {
        "FRONTEND": [SP + "verification-before-completion", SP + "requesting-code-review", "webapp-testing"],
        "RESEARCH": [],
        None: [SP + "verification-before-completion", SP + "requesting-code-review"],
    },
    "COMPLETE": [],
    "RESEARCH": [],
    "SMART_ANALYZE": ["project-detector", "smart-mode"],
    "SMART_DIRECT": {
        "FRONTEND": ["smart-mode", "verification-runner", "frontend-design"],
        None: ["smart-mode", "verification-runner"],
    },
    "SMART_ORCHESTRATED": {
        "FRONTEND": ["smart-mode", "task-decomposer", "verification-runner", "frontend-design"],
        None: ["smart-mode", "task-decomposer", "verification-runner"],
    },
    "SMART_VERIFY": ["smart-mode", "verification-runner"],
    # The pipeline's own states, in the skill's vocabulary.
    "DECOMPOSE": ["task-decomposer"],
    "QA": {
        "FRONTEND": ["verification-runner", "webapp-testing"],
        None: ["verification-runner"],
    },
    "E2E": ["e2e-validator"],
    "CHECKPOINT": [],
    "FAILED": [],
}


def mandatory_skills(state, work_type):
    """The skills list for (state, work_type); unknown states give []."""
    row = _TABLE.get(state, [])
    if isinstance(row, dict):
        row = row.get(work_type if work_type in row else None, row[None])
    return list(row)
