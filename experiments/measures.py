"""What one run's log (its history.jsonl records) says: the best score so far at each evaluation, how the run
searched, and how long its iterations took. The report and the wall-time estimate build on these.

Left out: anything that needs the model or the task (drift.py measures the policy; molecule_origins.py parses
molecules); these read the records alone.
"""


def curve(records: list[dict], budget: int) -> list[float]:
    """Best-so-far score after 0..budget evaluations, read from the iteration log: one step per new candidate, in
    the order the log lists them (an iteration scores its batch at once; that order stands in for one within it),
    so that two runs cut at the same evaluation count are cut fairly. A record that lists no candidates counts its
    finds from the evaluation total it reached."""
    points, best = [0.0], 0.0
    for r in records:
        new = [c["score"] for m in r.get("members", []) for c in m["candidates"] if c["status"] == "new"]
        if len(points) - 1 + len(new) != r["evaluations"]:  # no candidates logged: one step for the iteration
            points += [best] * (r["evaluations"] - len(points))
            new = [r["best_score"]]
        for score in new:
            best = max(best, score)
            points.append(best)
        if len(points) > budget + 1:  # found past the budget (a run with a larger one): not counted
            break
    points = points[:budget + 1]
    return points + [points[-1]] * (budget + 1 - len(points))


def sampled_answers(records: list[dict]) -> list[dict]:
    """The members of these iterations whose answers were sampled (a greedy re-insert is none)."""
    return [m for r in records for m in r.get("members", []) if m["origin"] != "greedy"]


def run_dynamics(records: list[dict], iterations: int, budget: int) -> dict:
    """What a run's log says about how it searched: iterations run; GRPO updates taken and skipped (a group with
    no signal); how far each update moved the policy, as |token ratio - 1| and the clipped fraction of its last
    step (the ratio is 1 before the first step, so this is the step's own move); the sampled answers (greedy
    re-inserts left out) and how many held a candidate the task could score (the rest did not parse: a policy
    rewarded 0 for those learns to parse), and their candidates and how many were new (a policy that collapses
    onto a few answers finds ever fewer new ones), each over the run and over its last quarter of iterations; and
    whether it stalled (stopped by --patience: neither solved, nor at its iteration cap, nor out of budget)."""
    records = [r for r in records if r.get("iteration") != 0]  # the warm start is no iteration
    updates = [r for r in records if r.get("ratio_mean") is not None]
    answers, answers_late = sampled_answers(records), sampled_answers(records[len(records) * 3 // 4:])
    sampled = [c for m in answers for c in m["candidates"]]
    late = [c for m in answers_late for c in m["candidates"]]
    last = records[-1] if records else {}
    stalled = (last.get("iteration", 0) < iterations and last.get("evaluations", 0) < budget
               and last.get("best_score", 0.0) < 1)
    return dict(iterations=len(records), updates=len(updates), skipped=sum("skipped" in r for r in records),
                ratio_moves=[abs(r["ratio_mean"] - 1) for r in updates],
                clip=[r["clip_fraction"] for r in updates],
                answers=len(answers), valid=sum(bool(m["candidates"]) for m in answers),
                answers_late=len(answers_late), valid_late=sum(bool(m["candidates"]) for m in answers_late),
                new=sum(c["status"] == "new" for c in sampled), sampled=len(sampled),
                new_late=sum(c["status"] == "new" for c in late), sampled_late=len(late), stalled=stalled)


def timings(records: list[dict]) -> dict:
    """One run's timed iterations (the warm start, iteration 0, has no times): how many, the evaluations they
    added, their seconds in all and without the update, and the warm start's evaluations. An iteration run in
    lockstep with others (its record's `lockstep`) is charged its share of the sampling and update they shared."""
    t = dict(iterations=0, evaluations=0, seconds=0.0, sampling_seconds=0.0, warm=0)
    before = 0
    for r in records:
        if "time_sample" in r:
            share = r.get("lockstep", 1)
            t["iterations"] += 1
            t["evaluations"] += r["evaluations"] - before
            t["sampling_seconds"] += r["time_sample"] / share + r["time_score"]
            t["seconds"] += (r["time_sample"] + r["time_update"]) / share + r["time_score"]
        elif r["iteration"] == 0:
            t["warm"] = r["evaluations"]
        before = r["evaluations"]
    return t
