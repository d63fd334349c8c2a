"""`loan-desk`: bring Loan Desk up step by step, or all at once.

loan-desk               services, load, apply, materialize, train (each skipped when
                        already done), then serve the app
loan-desk services      make Postgres and Valkey reachable and print where
loan-desk env           print the variables feature_repo/feature_store.yaml reads
loan-desk load          put applicant data into Postgres
loan-desk apply         feast apply
loan-desk materialize   copy the latest features into Valkey (incremental, up to now)
loan-desk train         train the model on a point-in-time-correct training set
loan-desk models        list the trained model bundles, go back to one, or promote one (recorded)
loan-desk policy        show the credit policy, or back-test a proposed one (simulate)
loan-desk audit verify  check the decision trail's hash chains
loan-desk export        write the offline tables to Parquet (--parquet DIR) for the Spark profile
loan-desk decide        decide applications given as JSON lines (stdin or a file), one JSON answer each
loan-desk score         score a CSV of applications into a CSV of results (a recorded batch)
loan-desk serve         run the Streamlit app
"""

from __future__ import annotations

import argparse
import os
import re
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
    changed, msg = load(_settings(), req, force=args.force)
    _say(msg)
    if changed:
        _say(
            "next: `uv run loan-desk materialize` and `uv run loan-desk train` (or `uv run loan-desk`, which runs "
            "both); until they have run, Apply refers applications to manual underwriting instead of deciding"
        )
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
    from bootstrap.governance import record_model_event
    from model.train import train

    meta = train(store, _settings(), out_dir=args.out)
    m = meta["metrics"]
    bayes = f" (Bayes AUC {m['bayes_auc']:.3f})" if "bayes_auc" in m else ""
    _say(
        f"model {meta['model_version']}: test AUC {m['auc']:.3f}{bayes}, calibration error "
        f"{m['calibration_error']:.3f}, approves {m['approval_rate_test']:.1%} of the test slice at the policy's "
        f"cut-off {meta['threshold']:.3f}; {meta['seconds']:.1f} s"
    )
    promo = meta["promotion"]
    record_model_event(
        _settings(),
        meta["model_version"],
        promo["action"],
        "train",
        {"checks": promo["checks"], "champion": promo["champion"]},
    )
    if promo["action"] == "promoted":
        _say(f"wrote {meta['written_to']} and made it the current model (champion)")
    else:
        _say(
            f"wrote {meta['written_to']}; it stays a challenger (scored in the shadow of each decision): "
            f'`uv run loan-desk models promote {meta["model_version"]} --reason "…"` overrides'
        )
    return 0


def cmd_models_list(args) -> int:
    from model.bundles import list_bundles, root_dir

    found = list_bundles(args.dir)
    if not found:
        _say(f"no model bundles in {root_dir(args.dir)}: run `uv run loan-desk train`")
        return 0
    width = max(len("version"), *(len(b.version) for b in found))
    print(f"  {'version':{width}}  {'trained at (UTC)':19}  {'test AUC':>8}  {'threshold':>9}")
    for b in found:
        mark = "*" if b.current else " "
        when = (b.trained_at or "?")[:19].replace("T", " ")
        auc = f"{b.auc:.3f}" if isinstance(b.auc, int | float) else "-"
        thr = f"{b.threshold:g}" if b.threshold is not None else "-"
        note = f"  ({b.problem})" if b.problem else ""
        print(f"{mark} {b.version:{width}}  {when:19}  {auc:>8}  {thr:>9}{note}")
    if not any(b.current for b in found):
        _say("no bundle is current: `uv run loan-desk models use VERSION` picks one")
    return 0


def cmd_models_use(args) -> int:
    from model.bundles import current_version, load_bundle, use

    before = current_version(args.dir)
    bundle = load_bundle(args.version, args.dir)  # refuses an unknown or broken bundle before switching
    use(bundle.version, args.dir)
    auc = (bundle.metadata.get("metrics") or {}).get("auc")
    _say(
        f"model {bundle.version} (threshold {bundle.threshold:g}"
        + (f", test AUC {auc:.3f}" if isinstance(auc, int | float) else "")
        + f") is now current{f', was {before}' if before and before != bundle.version else ''}; "
        "running services pick it up at their next decision"
    )
    return 0


def cmd_export(args) -> int:
    from bootstrap.export import export_parquet

    settings = _settings()
    res = export_parquet(settings, Path(args.parquet))
    _say(res.message)
    if settings.offline != "spark" or settings.export_location() != str(res.target):
        _say(
            f"for the Spark profile: export LOAN_DESK_OFFLINE=spark LOAN_DESK_EXPORT_DIR={shlex.quote(str(res.target))}"
        )
    return 0


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return "cli"


def cmd_decide(args) -> int:
    from bootstrap.jsonl import decide_lines
    from runtime.migrations import migrate

    s = _settings()
    migrate(s)
    user = (args.user or _os_user()).strip() or _os_user()
    if args.file:
        with open(args.file, encoding="utf-8", errors="replace") as f:
            decided, errors = decide_lines(s, f, sys.stdout, user)
    else:
        stdin = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        decided, errors = decide_lines(s, stdin, sys.stdout, user)
    _say(f"{decided:,} decided and recorded for {user}, {errors:,} with errors")
    return 1 if errors else 0


def cmd_score(args) -> int:
    from model.batch import score_csv

    s = _settings()
    user = (args.user or _os_user()).strip() or _os_user()
    last = [0.0]

    def progress(line: int, lines: int) -> None:
        import time

        if time.monotonic() - last[0] > 2:
            last[0] = time.monotonic()
            _say(f"  line {line:,} of about {lines:,}")

    with open(args.input, "rb") as source:
        if args.output == "-":
            summary = score_csv(
                s,
                source,
                sys.stdout,
                username=user,
                filename=Path(args.input).name,
                again=args.again,
                progress=progress,
            )
        else:
            with open(args.output, "w", encoding="utf-8", newline="") as sink:
                summary = score_csv(
                    s, source, sink, username=user, filename=Path(args.input).name, again=args.again, progress=progress
                )
    _say(summary.describe() + ("" if args.output == "-" else f"; results in {args.output}"))
    return 0 if summary.status == "done" else 2


def cmd_serve(args) -> int:
    from bootstrap.serve import serve

    return serve(port=args.port, address=args.address)


def cmd_all(args) -> int:
    from bootstrap.load import LoadRequest, load
    from bootstrap.services import describe, ensure_services
    from feast_ext.materialize import materialize
    from feast_ext.store import apply, feature_store
    from model.bundles import current_metadata
    from model.train import train

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
def whole_number(text: str) -> int:
    """argparse type: ASCII digits only (int() would also take '𝟘𝟙𝟚𝟛', '１２３' or '1_000')."""
    if not re.fullmatch(r"[+-]?[0-9]{1,12}", text.strip()):
        shown = text if len(text) <= 20 else text[:20] + "…"
        raise argparse.ArgumentTypeError(f"must be a whole number written with the digits 0-9, got {shown!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loan-desk", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--applicants",
        type=whole_number,
        default=None,
        help="synthetic applicants (default: keep the loaded data, else 30000)",
    )
    p.add_argument("--seed", type=whole_number, default=None, help="seed of the synthetic data (default 42)")
    p.add_argument("--port", type=whole_number, default=8501)
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
    sp.add_argument("--applicants", type=whole_number, default=30_000, help="synthetic applicants (default 30000)")
    sp.add_argument("--seed", type=whole_number, default=42)
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

    sp = sub.add_parser("models", help="list the trained model bundles, or make an earlier one current")
    msub = sp.add_subparsers(metavar="ACTION", required=True)
    mp = msub.add_parser("list", help="versions, training time, test AUC and threshold; * marks the current one")
    mp.add_argument("--dir", type=Path, default=None, help="model folder (default .loan-desk/model)")
    mp.set_defaults(func=cmd_models_list)
    mp = msub.add_parser("use", help="make VERSION the current model (atomic; running services switch too)")
    mp.add_argument("version", metavar="VERSION")
    mp.add_argument("--dir", type=Path, default=None, help="model folder (default .loan-desk/model)")
    mp.set_defaults(func=cmd_models_use)
    from bootstrap import governance

    governance.register(sub, msub)

    sp = sub.add_parser("export", help="write the offline tables to Parquet for the Spark profile")
    sp.add_argument("--parquet", metavar="DIR", required=True, help="folder of the export (replaced atomically)")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("decide", help="decide applications given as JSON lines; one JSON line out per application")
    sp.add_argument("file", nargs="?", metavar="FILE", help="JSON lines to read (default: stdin)")
    sp.add_argument("--user", default=None, help="who the decisions are recorded for (default: the OS user)")
    sp.set_defaults(func=cmd_decide)

    sp = sub.add_parser("score", help="score a CSV of applications (one recorded batch) into a CSV of results")
    sp.add_argument("input", metavar="IN.csv")
    sp.add_argument("-o", "--output", metavar="OUT.csv", required=True, help="results CSV ('-' for stdout)")
    sp.add_argument("--user", default=None, help="who the batch is recorded for (default: the OS user)")
    sp.add_argument("--again", action="store_true", help="score a file that was already scored (records it again)")
    sp.set_defaults(func=cmd_score)

    sp = sub.add_parser("serve", help="run the Streamlit app")
    sp.add_argument("--port", type=whole_number, default=8501)
    sp.add_argument("--address", default="127.0.0.1")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("users", help="manage app users, their sign-in lockouts and sessions")
    usub = sp.add_subparsers(metavar="ACTION", required=True)
    up = usub.add_parser("add", help="add a new user; password from stdin, a prompt or LOAN_DESK_PASSWORD")
    up.add_argument("name")
    up.add_argument("--role", choices=["officer", "underwriter", "admin"], required=True)
    up.set_defaults(func=cmd_users_add)
    up = usub.add_parser("set", help="change an existing user's role (ends their sessions)")
    up.add_argument("name")
    up.add_argument("--role", choices=["officer", "underwriter", "admin"], required=True)
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

    sp = sub.add_parser("api", help="serve the Decision API (JSON over HTTP, bearer tokens)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=whole_number, default=8000)
    sp.add_argument("--workers", type=whole_number, default=1, help="worker processes (default 1)")
    sp.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    sp.set_defaults(func=cmd_api)

    sp = sub.add_parser("tokens", help="manage the Decision API's client tokens")
    tsub = sp.add_subparsers(metavar="ACTION", required=True)
    tp = tsub.add_parser("create", help="create a client's token and print it (once)")
    tp.add_argument("name")
    tp.add_argument("--admin", action="store_true", help="may read every decision, not only its own")
    tp.set_defaults(func=cmd_tokens_create)
    tp = tsub.add_parser("list", help="list clients, roles and whether their token is valid")
    tp.set_defaults(func=cmd_tokens_list)
    tp = tsub.add_parser("revoke", help="revoke a client's token (at once, on every replica)")
    tp.add_argument("name")
    tp.set_defaults(func=cmd_tokens_revoke)
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


def cmd_api(args) -> int:
    import uvicorn

    from runtime.migrations import migrate

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    if not 1 <= args.workers <= 64:
        raise ValueError(f"--workers must be between 1 and 64, got {args.workers}")
    try:
        migrate(_settings())
    except Exception as exc:
        from runtime.health import unavailable

        down = unavailable(exc, _settings())
        if down is None:
            raise
        # A replica starts anyway: /healthz answers 503 until Postgres is back.
        _say(f"warning: {down}; serving anyway (/healthz says 503 until it answers)")
    _say(
        f"Decision API on http://{args.host}:{args.port} ({args.workers} worker{'s' * (args.workers > 1)}); "
        f"docs at /docs; tokens: uv run loan-desk tokens create NAME"
    )
    # An import string (not the app object) so that each worker process builds its own app.
    uvicorn.run(
        "api.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=not args.no_access_log,
        server_header=False,
        log_level="info",
    )
    return 0


def cmd_tokens_create(args) -> int:
    from runtime.migrations import migrate
    from runtime.tokens import create_token

    migrate(_settings())
    role = "admin" if args.admin else "client"
    token = create_token(_settings(), args.name, role)
    print(token)
    _say(
        f"token for client {args.name.strip().lower()!r} (role {role}) printed above; it is shown only this once "
        "(Loan Desk keeps only its SHA-256). Send it as `Authorization: Bearer <token>`."
    )
    return 0


def cmd_tokens_list(args) -> int:
    from runtime.migrations import migrate
    from runtime.tokens import list_tokens

    migrate(_settings())
    for t in list_tokens(_settings()):
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "valid"
        print(f"{t.name}\t{t.role}\tcreated {t.created_at:%Y-%m-%d %H:%M}\t{state}")
    return 0


def cmd_tokens_revoke(args) -> int:
    from runtime.migrations import migrate
    from runtime.tokens import revoke_token

    migrate(_settings())
    revoke_token(_settings(), args.name)
    _say(f"token of client {args.name.strip().lower()!r} revoked; its requests are refused from now on")
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
