"""9. Credit policy back-test: `loan-desk policy simulate` over every historical application.

The floor is the point-in-time join alone (Feast's `get_historical_features` for the feature
service, the same call simulate makes): simulate = that join + scoring every loan + two policies'
outcomes, P&L and approval ratios by age band and state.  Both warm (store and model loaded),
interleaved, same process.
"""

from __future__ import annotations

import statistics
import time

from bench.common import SMALL, ensure_data, record, say

QUICK = {"repeats": 1}


def run(repeats: int = 5, applicants: int = SMALL) -> dict:
    s = ensure_data(applicants, materialized=True, trained=True)
    from bootstrap.governance import simulate
    from feast_ext.store import feature_store
    from model.train import entity_sql, training_frame

    store = feature_store(s)
    simulate(s, None)  # warm: store, registry, model, policy
    join, sim = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        training_frame(store, entity_sql(s))
        join.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = simulate(s, None)
        sim.append(time.perf_counter() - t0)
    figures = {
        "policy_simulate_rows": res["rows"],
        "policy_simulate_s_median": statistics.median(sim),
        "policy_simulate_s_max": max(sim),
        "pit_join_s_median": statistics.median(join),
        "simulate_vs_join": statistics.median(sim) / statistics.median(join),
        "targets": {"simulate over all loans <= 10 s": max(sim) <= 10.0},
    }
    say(f"  simulate: median {figures['policy_simulate_s_median']:.2f} s over {res['rows']:,} loans")
    table = [
        ("step", "median s", "max s", "runs"),
        ("point-in-time join alone (floor)", figures["pit_join_s_median"], max(join), repeats),
        ("policy simulate (join + score + two policies)", figures["policy_simulate_s_median"], max(sim), repeats),
        ("simulate / join (median)", figures["simulate_vs_join"], "", ""),
    ]
    record("policy", figures, table, f"Credit policy back-test ({res['rows']:,} historical applications)")
    return figures
