"""The CLI's governance commands: the credit policy, the audit trail and the model lifecycle.

loan-desk policy show                 the policy in force and the cut-off it gives the current model
loan-desk policy simulate [FILE]      back-test FILE against the policy in force
loan-desk audit verify                recompute every seal of the decision trail
loan-desk models promote VERSION --reason TEXT    make VERSION the champion, recorded
"""

from __future__ import annotations

import getpass
import os
import sys
import time

import numpy as np


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _settings():
    from runtime.settings import Settings

    return Settings.from_env()


# --- policy ------------------------------------------------------------------------------------------
def cmd_policy_show(args) -> int:
    from model.bundles import current_metadata
    from model.policy import load_policy

    policy = load_policy(args.file)
    for line in policy.describe():
        print(line)
    meta = current_metadata()
    if meta is None:
        print("  (no trained model: the cut-off is set when one is trained)")
        return 0
    cut = policy.cutoff(meta)
    lo, hi = policy.band(cut)
    print(
        f"  with model {meta['model_version']}: cut-off {cut:.2%}; approve below {lo:.2%}, refer "
        f"{lo:.2%}–{hi:.2%}, decline from {hi:.2%}"
    )
    return 0


def simulate(settings, proposed_path, current_path=None, lgd: float | None = None) -> dict:
    """Back-test two policies on every historical application (point-in-time features, the
    current model's scores).  Returns {"rows", "seconds", "policies": {label: summary}}."""
    from feast_ext.store import feature_store
    from model import groups
    from model.bundles import current_version, load_bundle
    from model.features import DERIVED, INDEX, frame_matrix
    from model.policy import load_policy
    from model.train import entity_sql, training_frame

    t0 = time.perf_counter()
    current = load_policy(current_path)
    proposed = load_policy(proposed_path)
    version = current_version()
    if version is None:
        raise RuntimeError("no trained model: run `uv run loan-desk train` first")
    bundle = load_bundle(version)
    df = training_frame(feature_store(settings), entity_sql(settings))
    X = frame_matrix(df)
    p = bundle.booster.inplace_predict(X[:, bundle.columns])
    y = df["loan_status"].to_numpy().astype(float)
    amount = df["loan_amnt"].to_numpy(dtype=float)
    rate = df["loan_int_rate"].to_numpy(dtype=float) / 100.0
    loss = lgd or current.loss_given_default or proposed.loss_given_default or 0.6
    values = {c: df[c].to_numpy() for c in df.columns if df[c].dtype.kind in "if"}
    for name in DERIVED:
        values[name] = X[:, INDEX[name]]
    ages = df["person_age"].to_numpy()
    states = df["state"].fillna("unknown").to_numpy() if "state" in df else np.array(["unknown"] * len(df))
    out = {"rows": int(len(df)), "model_version": version, "loss_given_default": loss, "policies": {}}
    for role, policy in (("current", current), ("proposed", proposed)):
        cut = policy.cutoff(bundle.metadata)
        lo, hi = policy.band(cut)
        outcome = np.where(p >= hi, 2, np.where(p >= lo, 1, 0))
        for k in policy.knockouts:
            v = values.get(k.feature)
            if v is not None:
                hit = np.nan_to_num(v.astype(float), nan=-np.inf) >= k.at_least
                outcome = np.where((outcome == 0) & hit, 1, outcome)
        approved = outcome == 0
        pnl = np.where(y[approved] > 0, -loss * amount[approved], amount[approved] * rate[approved]).sum()
        out["policies"][role] = {
            "label": policy.label,
            "cutoff": cut,
            "band": [lo, hi],
            "approve": float(approved.mean()),
            "refer": float((outcome == 1).mean()),
            "decline": float((outcome == 2).mean()),
            "bad_rate_approved": float(y[approved].mean()) if approved.any() else None,
            "expected_pnl": float(pnl),
            "by_age_band": groups.age_band_ratios(approved, ages),
            "by_state": groups.approval_ratios(approved, states),
        }
    out["seconds"] = time.perf_counter() - t0
    return out


def cmd_policy_simulate(args) -> int:
    from model.groups import AGE_BANDS

    res = simulate(_settings(), args.file, args.current, args.lgd)
    cur, new = res["policies"]["current"], res["policies"]["proposed"]
    print(
        f"Back-test over {res['rows']:,} historical applications, point-in-time features, model "
        f"{res['model_version']} (refitted on these loans: absolute bad rates are optimistic; the two policies "
        f"are compared like for like). Loss given default {res['loss_given_default']:.0%}, margin one year's interest."
    )
    print(f"{'':28}{'current ' + cur['label']:>26}{'proposed ' + new['label']:>28}")

    def row(name, a, b, fmt):
        print(f"{name:28}{fmt(a):>26}{fmt(b):>28}")

    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    row("cut-off", cur["cutoff"], new["cutoff"], lambda v: f"{v:.2%}")
    row("approve", cur["approve"], new["approve"], pct)
    row("refer", cur["refer"], new["refer"], pct)
    row("decline", cur["decline"], new["decline"], pct)
    row("bad rate of approved", cur["bad_rate_approved"], new["bad_rate_approved"], pct)
    row("expected profit and loss", cur["expected_pnl"], new["expected_pnl"], lambda v: f"${v:,.0f}")
    print("Approval ratio by age band (approval rate ÷ the most-approved band's; < 0.80 flagged):")
    for band in [b[2] for b in AGE_BANDS]:
        a = next((r for r in cur["by_age_band"] if r["group"] == band), None)
        b = next((r for r in new["by_age_band"] if r["group"] == band), None)
        if a and b:
            row(f"  {band} (n={a['n']:,})", a, b, _ratio)
    print("Approval ratio by state (states with at least 30 applications; lowest five under the proposed policy):")
    ranked = sorted((r for r in new["by_state"] if r["ratio"] is not None), key=lambda r: r["ratio"])[:5]
    for b in ranked:
        a = next(r for r in cur["by_state"] if r["group"] == b["group"])
        row(f"  {b['group']} (n={b['n']:,})", a, b, _ratio)
    print(f"({res['seconds']:.1f} s)")
    return 0


def _ratio(r: dict) -> str:
    if r.get("ratio") is None:
        return f"{r['rate']:.1%} (small)"
    flag = " FLAG" if r["flag"] else ""
    return f"{r['ratio']:.2f} [{r['ratio_low']:.2f}–{r['ratio_high']:.2f}]{flag}"


# --- audit -------------------------------------------------------------------------------------------
def cmd_audit_verify(args) -> int:
    from runtime import audit
    from runtime.migrations import require

    s = _settings()
    from runtime import db

    with db.connect(s) as conn:
        require(conn)
    bad = 0
    for chain in audit.CHAINS.values():
        v = audit.verify(s, chain)
        if v.ok:
            before = f" ({v.before_chain:,} recorded before the chain began)" if v.before_chain else ""
            print(f"{chain.name}: {v.sealed:,} sealed records intact{before}")
        else:
            bad += 1
            print(f"{chain.name}: {len(v.problems)} problem(s) in {v.sealed:,} sealed records")
            for p in v.problems:
                print(f"  {p}")
    return 1 if bad else 0


# --- models ------------------------------------------------------------------------------------------
def record_model_event(settings, version: str, action: str, reason: str = "", details: dict | None = None) -> None:
    from psycopg.types.json import Jsonb

    from runtime import db
    from runtime.migrations import migrate

    migrate(settings)
    with db.connect(settings) as conn:
        conn.execute(
            "INSERT INTO loan_desk_model_events (username, version, action, reason, details) "
            "VALUES (%s, %s, %s, %s, %s)",
            [os.environ.get("USER") or getpass.getuser(), version, action, reason, Jsonb(details or {})],
        )


def cmd_models_promote(args) -> int:
    from model.bundles import challenger_version, current_version, load_bundle, set_challenger, use

    reason = (args.reason or "").strip()
    if len(reason) < 5:
        _say('loan-desk: error: give the reason for overriding the promotion rule: --reason "…" (recorded)')
        return 2
    before = current_version(args.dir)
    bundle = load_bundle(args.version, args.dir)
    use(bundle.version, args.dir)
    if challenger_version(args.dir) == bundle.version:
        set_challenger(None, args.dir)
    record_model_event(_settings(), bundle.version, "override", reason, {"replaced": before})
    _say(f"model {bundle.version} is now the champion (was {before}); recorded with your reason")
    return 0


def register(sub, models_sub) -> None:
    sp = sub.add_parser("policy", help="the credit policy: show it, or back-test a proposed one")
    psub = sp.add_subparsers(dest="policy_cmd", required=True, metavar="show|simulate")
    pp = psub.add_parser("show", help="the policy in force and the cut-off it gives the current model")
    pp.add_argument("file", nargs="?", help="another policy file (default: the one in force)")
    pp.set_defaults(func=cmd_policy_show)
    pp = psub.add_parser("simulate", help="back-test FILE against the policy in force over historical applications")
    pp.add_argument("file", nargs="?", help="the proposed policy (default: the one in force)")
    pp.add_argument("--current", help="compare against this file instead of the policy in force")
    pp.add_argument("--lgd", type=float, help="loss given default for profit and loss (default: the policy's)")
    pp.set_defaults(func=cmd_policy_simulate)

    sp = sub.add_parser("audit", help="check the decision trail's hash chains")
    asub = sp.add_subparsers(dest="audit_cmd", required=True, metavar="verify")
    ap = asub.add_parser("verify", help="recompute every seal; exit 1 and name each record that differs")
    ap.set_defaults(func=cmd_audit_verify)

    mp = models_sub.add_parser("promote", help="make VERSION the champion against the promotion rule (recorded)")
    mp.add_argument("version")
    mp.add_argument("--reason", required=True, help="why (recorded in the model events)")
    mp.add_argument("--dir", help="model folder (default: the configured one)")
    mp.set_defaults(func=cmd_models_promote)
