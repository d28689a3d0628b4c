"""Makes tests/golden/discover.json with TTT-Discover's own code (GitHub test-time-training/discover). Run once, by
hand, with a checkout of it and the project's environment (torch, numpy):

    git clone https://github.com/test-time-training/discover /tmp/discover      # the files below, at 96df74f
    cd /work/main && .venv/bin/python tests/golden/make_discover.py /tmp/discover

Never imported by the project or the tests, and none of TTT-Discover's code is copied here: its recipe imports
a training service at module level, so this reads two definitions out of its files (ast) and runs them as they
are, with stand-ins for what they touch and do not need (file locks, JSON saves, the state classes):
- tinker_cookbook/rl/train.py, compute_advantages: "entropic_adaptive_beta" and "entropic" (beta 2) advantages;
- tinker_cookbook/recipes/ttt/sampler.py, PUCTSampler (sampler_type puct_backprop, its defaults): a scripted run
  of picks, each followed by a group of attempts (some failing, some finding a candidate already found) given to
  update_states / record_failed_rollout one by one as its environments do, and a flush a step.
Scores have no ties: the recipe ranks tied scores with numpy's default argsort, whose tie order depends on the
machine's sort; the test holds history.Archive to the same picks and counts.
"""
import ast
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import types
import uuid
from pathlib import Path

import numpy as np
import torch

TRAIN = "tinker_cookbook/rl/train.py"
SAMPLER = "tinker_cookbook/recipes/ttt/sampler.py"
REWARDS = [[0.0, 1.0, 2.0], [0.1, 0.5, 0.3, 0.9, 0.2, 0.25, 0.7, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6],
           [0.3, 0.3, 0.3, 0.3], [0.9, 0.9, 0.9, 0.1], [0.2, 0.8, 0.5], [0.42], [12.0, 150.0, 37.5, 80.0, 99.0]]


def definitions(path: Path, names: set[str], namespace: dict) -> dict:
    """Run the top-level definitions `names` of a Python file in `namespace`, without importing the file."""
    tree = ast.parse(path.read_text())
    kept = [node for node in tree.body if getattr(node, "name", None) in names]
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


class State:
    """What PUCTSampler reads of a state: id, value, lineage (parents), code (its dedup key)."""


    def __init__(self, timestep=-1, value=None, code=""):
        self.id, self.timestep, self.value, self.code = str(uuid.uuid4()), timestep, value, code
        self.parent_values, self.parents, self.observation = [], [], ""

    def to_dict(self):  # what the sampler saves, which the stand-in for its JSON writer drops
        return {}


def advantages(repo: Path) -> list[dict]:
    class Group:
        def __init__(self, rewards):
            self.rewards = rewards

        def get_total_rewards(self):
            return list(self.rewards)

    ns = definitions(repo / TRAIN, {"compute_advantages"}, dict(torch=torch, np=np, math=math, List=list,
                                                                 TrajectoryGroup=Group))
    run = ns["compute_advantages"]
    return [dict(rewards=r, adaptive=run([Group(r)], "entropic_adaptive_beta", 2.0)[0].tolist(),
                 beta_2=run([Group(r)], "entropic", 2.0)[0].tolist()) for r in REWARDS]


def puct_run(repo: Path, steps=40, group=6, fail_p=0.3, vocab=40, max_states=12) -> dict:
    stand_ins = dict(np=np, os=os,
                     threading=__import__("threading"), ABC=object, abstractmethod=lambda f: f, State=State,
                     InequalitiesState=type("I", (), {}), ErdosState=type("E", (), {}),
                     create_initial_state=lambda *a, **k: State(value=0.0),
                     _file_lock=lambda path: contextlib.nullcontext(), _atomic_write_json=lambda *a: None,
                     _read_json_or_default=lambda *a, **k: None, _sampler_file_for_step=lambda base, step: base,
                     MIN_CONSTRUCTION_LEN=0, MAX_CONSTRUCTION_LEN=0, MAX_ERDOS_CONSTRUCTION_LEN=0)
    ns = definitions(repo / SAMPLER, {"StateSampler", "PUCTSampler"}, stand_ins)
    sampler = ns["PUCTSampler"]("unused.json", env_type="cp", max_buffer_size=max_states)
    rng, score_of, script = random.Random(0), {}, []
    for step in range(steps):
        parent = sampler.sample_states(1)[0]
        children, failed = [], 0
        for _ in range(group):
            if rng.random() < fail_p:
                sampler.record_failed_rollout(parent)
                failed += 1
                continue
            candidate = f"c{rng.randrange(vocab)}"
            score = score_of.setdefault(candidate, rng.random())  # one score a candidate, as a score cache gives
            sampler.update_states([State(step, score, candidate)], [parent], save=False)
            children.append([candidate, score])
        sampler.flush(step)
        script.append(dict(pick=parent.code or None, children=children, attempts=group, failed=failed))
    by_code = {s.code: s for s in sampler._states}
    final = {code: dict(score=s.value, visits=sampler._n.get(s.id, 0), best_child=sampler._m.get(s.id))
             for code, s in by_code.items()}
    return dict(max_states=max_states, steps=script, final=final, attempts=sampler._T)


def main():
    repo = Path(sys.argv[1])
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    out = dict(source=f"github.com/test-time-training/discover {commit.strip() or '(commit unknown)'}: {TRAIN} "
                      f"compute_advantages, {SAMPLER} PUCTSampler", advantages=advantages(repo), puct=puct_run(repo))
    path = Path(__file__).with_name("discover.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
