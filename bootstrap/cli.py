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


def cmd_materialize(args) -> int:
    from feast_ext.materialize import materialize

    res = materialize(_settings(), requested_by=os.environ.get("USER", "cli"), full=True if args.full else None)
    window = f"{res.start:%Y-%m-%d %H:%M} .. " if res.start else "since the last run .. "
    _say(
        f"materialized ({res.mode}) {window}{res.end:%Y-%m-%d %H:%M} UTC in {res.seconds:.1f} s; "
        f"{res.rows:,} entities online"
    )
    return 0


def cmd_train(args) -> int:
    from feast_ext.store import feature_store
    from model.train import train

    meta = train(feature_store(_settings()), _settings(), out_dir=args.out)
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

    sp = sub.add_parser("users", help="manage app users, their sign-in lockouts and sessions")
    usub = sp.add_subparsers(metavar="ACTION", required=True)
    up = usub.add_parser("add", help="add a new user; password from stdin, a prompt or LOAN_DESK_PASSWORD")
    up.add_argument("name")
    up.add_argument("--role", choices=["officer", "admin"], required=True)
    up.set_defaults(func=cmd_users_add)
    up = usub.add_parser("set", help="change an existing user's role (ends their sessions)")
    up.add_argument("name")
    up.add_argument("--role", choices=["officer", "admin"], required=True)
    up.set_defaults(func=cmd_users_set)
    up = usub.add_parser("passwd", help="change an existing user's password (ends their sessions)")
    up.add_argument("name")
    up.set_defaults(func=cmd_users_passwd)
    ul = usub.add_parser("list", help="list users and roles")
    ul.set_defaults(func=cmd_users_list)
    ul = usub.add_parser("lockouts", help="user names and addresses locked out (or with failed sign-ins)")
    ul.set_defaults(func=cmd_users_lockouts)
    ul = usub.add_parser("unlock", help="lift a sign-in lockout now")
    target = ul.add_mutually_exclusive_group(required=True)
    target.add_argument("name", nargs="?", help="user name")
    target.add_argument("--client", metavar="ADDR", help="a client address instead (see `users lockouts`)")
    ul.set_defaults(func=cmd_users_unlock)
    ul = usub.add_parser("sessions", help="open sign-in sessions")
    ul.set_defaults(func=cmd_users_sessions)
    return p


def _users_ready():
    from runtime.migrations import migrate

    s = _settings()
    migrate(s)
    return s


def cmd_users_add(args) -> int:
    from runtime.users import add_user, read_password

    s = _users_ready()
    stored = add_user(s, args.name, args.role, read_password())
    note = f" (names are stored stripped and lowercase; you typed {args.name!r})" if stored != args.name else ""
    _say(f"created user {stored!r} with role {args.role}{note}")
    return 0


def cmd_users_set(args) -> int:
    from runtime.users import set_role

    _say(set_role(_users_ready(), args.name, args.role))
    return 0


def cmd_users_passwd(args) -> int:
    from runtime.users import read_password, set_password

    s = _users_ready()
    _say(set_password(s, args.name, read_password()))
    return 0


def cmd_users_list(args) -> int:
    from runtime.users import list_users

    for name, role in list_users(_users_ready()):
        print(f"{name}\t{role}")
    return 0


def cmd_users_lockouts(args) -> int:
    from runtime.errors import clip
    from runtime.signin import lockouts

    rows = lockouts(_users_ready())
    if not rows:
        _say("no lockouts and no recent failed sign-ins")
        return 0
    print("kind\tname or address\tstate\tfailures\tlast failure (UTC)")
    for r in rows:
        state = f"locked until {r['locked_until']:%Y-%m-%d %H:%M:%S}" if r["locked"] else "not locked"
        last = f"{r['last_failure']:%Y-%m-%d %H:%M:%S}" if r["last_failure"] else "-"
        print(f"{r['kind']}\t{clip(r['key'], 64)}\t{state}\t{r['failures']}\t{last}")
    return 0


def cmd_users_unlock(args) -> int:
    from runtime.errors import clip
    from runtime.signin import unlock
    from runtime.users import normalise

    s = _users_ready()
    if args.client:
        what = f"address {clip(args.client, 64)!r}"
        done = unlock(s, args.client.strip(), kind="client")
    else:
        what = f"user name {clip(normalise(args.name), 64)!r}"
        done = unlock(s, args.name, kind="user")
    _say(f"{what}: lockout lifted and failures cleared" if done else f"{what} was not locked; nothing changed")
    return 0


def cmd_users_sessions(args) -> int:
    from runtime.sessions import open_sessions

    rows = open_sessions(_users_ready())
    if not rows:
        _say("no open sessions")
        return 0
    print("user\tclient\tsigned in (UTC)\tlast seen (UTC)\texpires (UTC)")
    for r in rows:
        print(
            f"{r['username']}\t{r['client']}\t{r['created_at']:%Y-%m-%d %H:%M}\t"
            f"{r['last_seen']:%Y-%m-%d %H:%M}\t{r['expires_at']:%Y-%m-%d %H:%M}"
        )
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
