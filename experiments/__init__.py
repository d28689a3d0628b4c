"""The experiment harness: sweeps of migrate.py, their records, and the report computed from them.

    __main__.py          the command line (python -m experiments): protocols, flags, run then report
    run.py               launching and resuming sweeps, and the wall-time estimate
    records.py           a run's light data: read from run folders, packed into runs.jsonl.gz, unpacked
    measures.py          what one run's log says: best-so-far curve, search dynamics, timings
    versions.py          one code version per report
    stats.py             paired differences, bootstrap interval, sign test, Holm, Wilson
    report.py            the tables, the plot and settings.md
    drift.py             KL of each trained policy to the base model (python -m experiments.drift)
    molecule_origins.py  where a molecule experiment's finds came from (python -m experiments.molecule_origins)
    replay_stalled.py    runs an early patience stopped, run again to the cap (python -m experiments.replay_stalled)

Nothing here is part of a run: the code hash that names an experiment's code version leaves this package out.
"""
