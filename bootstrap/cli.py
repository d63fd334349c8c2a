"""`loan-desk`: bring Loan Desk up step by step, or all at once.

loan-desk               services, load, apply, materialize, train (each skipped when
                        already done), then serve the app
loan-desk services      make Postgres and Valkey reachable and print where
loan-desk env           print the variables feature_repo/feature_store.yaml reads
loan-desk load          put applicant data into Postgres
loan-desk apply         feast apply
loan-desk materialize   copy the latest features into Valkey (incremental, up to now)
loan-desk train         train the model on a point-in-time-correct training set
loan-desk serve         run the Streamlit app
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from runtime.settings import Settings


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _settings() -> Settings:
    return Settings.from_env()


# --- steps ----------------------------------------------------------------------------------
def cmd_services(args) -> int:
    from bootstrap.services import describe, ensure_services, stop_services

    if args.stop:
        stopped = stop_services()
        _say("stopped the embedded " + " and ".join(stopped) if stopped else "no embedded server was running")
        return 0
    state = ensure_services(_settings())
    print(describe(state))
    if "embedded" in state.postgres or "embedded" in state.valkey:
        _say("embedded servers keep running; stop them with: uv run loan-desk services --stop")
    return 0


def cmd_env(args) -> int:
    for k, v in _settings().feast_env().items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


def cmd_load(args) -> int:
    from bootstrap.load import LoadRequest, load

    req = LoadRequest(
        source=args.source,
        applicants=args.applicants,
        seed=args.seed,
        data_dir=Path(args.data_dir) if args.data_dir else None,
    )
    _, msg = load(_settings(), req, force=args.force)
    _say(msg)
    return 0


def cmd_apply(args) -> int:
    from feast_ext.store import apply

    _say(apply(_settings()))
    return 0


class StepMissing(RuntimeError):
    """An earlier step has not run; the message names it."""


NEEDS_LOAD = "no loans in Postgres: run `uv run loan-desk load` first"


def _require_loans(s: Settings) -> None:
    from bootstrap.load import has_loans

    if not has_loans(s):
        raise StepMissing(NEEDS_LOAD)


def cmd_materialize(args) -> int:
    from feast_ext.materialize import materialize

    _require_loans(_settings())
    res = materialize(_settings(), requested_by=os.environ.get("USER", "cli"), full=True if args.full else None)
    window = f"{res.start:%Y-%m-%d %H:%M} .. " if res.start else "since the last run .. "
    _say(
        f"materialized ({res.mode}) {window}{res.end:%Y-%m-%d %H:%M} UTC in {res.seconds:.1f} s; "
        f"{res.rows:,} entities online"
    )
    return 0


def cmd_train(args) -> int:
    _require_loans(_settings())  # before the heavy imports: a missing step is said at once
    from feast.errors import FeatureServiceNotFoundException

    from feast_ext.store import feature_store
    from model.features import FEATURE_SERVICE

    store = feature_store(_settings())
    try:
        store.get_feature_service(FEATURE_SERVICE, allow_cache=False)
    except FeatureServiceNotFoundException:
        raise StepMissing(
            f"the feature service {FEATURE_SERVICE} is not registered: run `uv run loan-desk apply` first"
        ) from None
    from model.train import train

    meta = train(store, _settings(), out_dir=args.out)
    m = meta["metrics"]
    bayes = f" (Bayes AUC {m['bayes_auc']:.3f})" if "bayes_auc" in m else ""
    _say(
        f"model {meta['model_version']}: test AUC {m['auc']:.3f}{bayes}, accuracy "
        f"{m['accuracy_at_threshold']:.3f} at threshold {meta['threshold']}, Brier {m['brier']:.3f}; "
        f"{meta['seconds']:.1f} s"
    )
    _say(f"wrote {meta['written_to']}/model.json and metadata.json")
    return 0


def cmd_serve(args) -> int:
    from bootstrap.serve import serve

    return serve(port=args.port, address=args.address)


def cmd_all(args) -> int:
    from bootstrap.load import LoadRequest, load
    from bootstrap.services import describe, ensure_services
    from feast_ext.materialize import materialize
    from feast_ext.store import apply, feature_store
    from model.train import current_metadata, train

    state = ensure_services(_settings())
    s = state.settings
    _say(describe(state))
    from bootstrap.load import current_dataset
    from runtime import db

    with db.connect(s) as conn:
        have = current_dataset(conn)
    if have and args.applicants is None and args.seed is None:
        _say(
            f"data already loaded ({have.get('source')}, {have.get('rows', {}).get('loans', 0):,} loans); "
            "pass --applicants/--seed to replace it"
        )
    else:
        _, msg = load(s, LoadRequest(applicants=args.applicants or 30_000, seed=42 if args.seed is None else args.seed))
        _say(msg)
        with db.connect(s) as conn:
            have = current_dataset(conn)
    _say(apply(s))
    res = materialize(s, requested_by="loan-desk")
    _say(f"materialized ({res.mode}) in {res.seconds:.1f} s; {res.rows:,} entities online")
    meta = current_metadata()
    # Retrain when the model was trained on other data than what is loaded now.
    if meta is None or (meta.get("dataset") or {}).get("loaded_at") != (have or {}).get("loaded_at"):
        meta = train(feature_store(s), s)
        _say(
            f"trained model {meta['model_version']} (test AUC {meta['metrics']['auc']:.3f}); wrote {meta['written_to']}"
        )
    else:
        _say(f"model {meta['model_version']} is up to date")
    from runtime.users import ensure_default_users

    for line in ensure_default_users(s):
        _say(line)
    started_here = "started" in state.postgres or "started" in state.valkey
    if args.no_serve:
        if started_here:
            _say("embedded servers keep running; stop them with: uv run loan-desk services --stop")
        return 0
    from bootstrap.serve import serve

    try:
        return serve(port=args.port, address=args.address, replace_process=not started_here)
    finally:
        if started_here:  # leave nothing behind that this command started
            from bootstrap.services import stop_services

            _say("stopped the embedded " + " and ".join(stop_services()))


# --- parsing --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loan-desk", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--applicants", type=int, default=None, help="synthetic applicants (default: keep the loaded data, else 30000)"
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the synthetic data (default 42)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--no-serve", action="store_true", help="stop after training")
    p.set_defaults(func=cmd_all)
    sub = p.add_subparsers(title="steps", metavar="STEP")

    sp = sub.add_parser("services", help="make Postgres and Valkey reachable and print where")
    sp.add_argument("--stop", action="store_true", help="stop the embedded servers")
    sp.set_defaults(func=cmd_services)

    sp = sub.add_parser("env", help="print `export` lines for the feast CLI in another terminal")
    sp.set_defaults(func=cmd_env)

    sp = sub.add_parser("load", help="load applicant data into Postgres (COPY, idempotent)")
    sp.add_argument("--source", choices=["synthetic", "tutorial"], default="synthetic")
    sp.add_argument("--applicants", type=int, default=30_000, help="synthetic applicants (default 30000)")
    sp.add_argument("--seed", type=int, default=42)
    sp.add_argument("--data-dir", help="folder with the tutorial's parquet files (--source tutorial)")
    sp.add_argument("--force", action="store_true", help="reload even when the same data is there")
    sp.set_defaults(func=cmd_load)

    sp = sub.add_parser("apply", help="register the feature repo (feast apply)")
    sp.set_defaults(func=cmd_apply)

    sp = sub.add_parser("materialize", help="copy the latest features into Valkey, up to now")
    sp.add_argument("--full", action="store_true", help="rewrite the whole online store")
    sp.set_defaults(func=cmd_materialize)

    sp = sub.add_parser("train", help="train the model (point-in-time training set, temporal holdout)")
    sp.add_argument("--out", type=Path, default=None, help="model folder (default .loan-desk/model)")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("serve", help="run the Streamlit app")
    sp.add_argument("--port", type=int, default=8501)
    sp.add_argument("--address", default="127.0.0.1")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("users", help="manage app users")
    usub = sp.add_subparsers(metavar="ACTION", required=True)
    up = usub.add_parser("add", help="add or update a user; password from stdin or LOAN_DESK_PASSWORD")
    up.add_argument("name")
    up.add_argument("--role", choices=["officer", "admin"], required=True)
    up.set_defaults(func=cmd_users_add)
    ul = usub.add_parser("list", help="list users and roles")
    ul.set_defaults(func=cmd_users_list)
    return p


def cmd_users_add(args) -> int:
    from runtime.migrations import migrate
    from runtime.users import add_user, read_password

    migrate(_settings())
    add_user(_settings(), args.name, args.role, read_password())
    _say(f"user {args.name!r} saved with role {args.role}")
    return 0


def cmd_users_list(args) -> int:
    from runtime.migrations import migrate
    from runtime.users import list_users

    migrate(_settings())
    for name, role in list_users(_settings()):
        print(f"{name}\t{role}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:  # every failure ends as one clear line, never a traceback
        return _fail(exc)


def _fail(exc: Exception) -> int:
    from runtime.errors import explain

    _say(f"loan-desk: error: {explain(exc)}")
    if os.environ.get("LOAN_DESK_DEBUG"):
        raise exc
    return 2


if __name__ == "__main__":
    sys.exit(main())
