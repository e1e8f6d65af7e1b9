"""tuneline command line: parse options, load the config, call the pipeline.

    python run.py --config configs/sft.yaml [--set train.max_steps=50] [--no-cache] [--dry-run]
    python run.py --config configs/sft.yaml --preview 3 [--json]
    python run.py models NAME [--history]                   versions, aliases, scores, decisions, lineage
    python run.py promote NAME VERSION [--reason TEXT] [--who NAME]
    python run.py rollback NAME [--reason TEXT] [--who NAME]
    python run.py evaluate --config C --model REF [--set K=V] [--no-cache]   score a model, register nothing
    python run.py generate --model REF --prompt TEXT [--file prompts.jsonl]  answers (REF: models:/NAME@alias,
    python run.py chat --model REF [--system TEXT]                              models:/NAME/N or a directory)
    python run.py export --model REF --out DIR [--merge]                     a Hugging Face / PEFT directory
    python run.py dashboard [--mlflow-port 5000] [--zenml-port 8237] [--no-zenml]   MLflow + ZenML UIs, Ctrl-C stops
    python run.py --config C --stack configs/stacks/X.yaml [--schedule CRON] [--dry-run [--json]]   on a cloud stack
    python run.py stack register configs/stacks/X.yaml [--name N] [--replace]   the recipe's stack in ZenML
    python run.py schedules [--config C] [--delete NAME [--zenml-only]]   ZenML schedules; delete one and its job
    python run.py sweep --config C --sweep S [--trials N] [--storage URL] [--set K=V]   Optuna search, best registered

The registry commands use the store a run writes to: --config's tracking.mlflow_tracking_uri,
else MLFLOW_TRACKING_URI, else the SQLite file in TUNELINE_HOME.

Exit codes: 0 success, 2 config or data error (message names the key or file:line), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run.py", description="Fine-tune an LLM with a tracked ZenML pipeline.")
    p.add_argument("--config", required=True, help="project YAML, e.g. configs/sft.yaml")
    add_override_options(p, example="train.learning_rate=1e-4")
    p.add_argument("--dry-run", action="store_true", help="validate config and data, print the plan, stop")
    p.add_argument("--preview", type=int, metavar="N", help="print N tokenized examples and exit")
    p.add_argument(
        "--json",
        action="store_true",
        help="with --preview: one JSON object per line; with --stack --dry-run: one JSON object",
    )
    add_stack_options(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def add_override_options(p: argparse.ArgumentParser, example: str) -> None:
    """`--set KEY=VALUE` and `--no-cache`, the same on every command that runs a pipeline."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )
    p.add_argument(
        "--no-cache", action="store_true", help="re-run every step even if its inputs are unchanged"
    )


def add_registry_commands(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list a model's versions, newest first")
    models.add_argument("name", help="registered model name (registry.model_name)")
    models.add_argument("--history", action="store_true", help="also print every promotion and rollback")
    promote = sub.add_parser(
        "promote", help="make VERSION @champion; the current one becomes @previous-champion"
    )
    promote.add_argument("name")
    promote.add_argument("version")
    rollback = sub.add_parser("rollback", help="move @champion back to @previous-champion")
    rollback.add_argument("name")
    for cmd in (promote, rollback):
        cmd.add_argument("--reason", help="why (kept in the registry history)")
        cmd.add_argument("--who", help="who made the change (default: $USER)")
    for cmd in (models, promote, rollback):
        cmd.add_argument("--config", help="project YAML: its tracking URI and registry.alias are used")
        cmd.set_defaults(handler=run_registry_command)


def run_registry_command(args: argparse.Namespace) -> str:
    from tuneline.cli import models_command, promote_command, rollback_command

    if args.command == "models":
        return models_command(args.name, config_path=args.config, show_history=args.history)
    if args.command == "promote":
        out = promote_command(
            args.name, args.version, reason=args.reason, who=args.who, config_path=args.config
        )
    else:
        out = rollback_command(args.name, reason=args.reason, who=args.who, config_path=args.config)
    note = mirror_champion_to_zenml(args.name, args.config)
    return f"{out}\n{note}" if note else out


def mirror_champion_to_zenml(name: str, config_path: str | None) -> str | None:
    """ZenML's `production` stage follows @champion, where this TUNELINE_HOME has a ZenML store
    (a registry-only home gets none created)."""
    from pipelines.zenml_model import store_exists

    if not store_exists():
        return None
    from pipelines.stack import configure_environment, quiet_known_noise
    from tuneline.cli import champion_version

    champion = champion_version(name, config_path=config_path)
    configure_environment()
    quiet_known_noise()
    from pipelines.zenml_model import sync_production_stage

    return sync_production_stage(name, champion)


def add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="score a registered version or a model directory on the config's data (registers nothing)",
    )
    ev.add_argument("--config", required=True, help="project YAML: the data, template and eval settings")
    ev.add_argument(
        "--model",
        required=True,
        metavar="REF",
        help="models:/NAME@alias, models:/NAME/VERSION or a local model directory",
    )
    add_override_options(ev, example="eval.max_samples=16")
    ev.set_defaults(handler=run_evaluate_command)


def run_evaluate_command(args: argparse.Namespace) -> str:
    """Preflight as a training run does (data and config errors exit 2 before anything runs),
    then resolve the model (a bad reference exits 2 too), then the evaluation pipeline."""
    from tuneline.cli import preflight
    from tuneline.config import load_config
    from tuneline.evaluate.standalone import prepare_evaluation
    from tuneline.home import mlflow_tracking_uri, tuneline_home

    cfg = load_config(args.config, args.overrides)
    fingerprints, _ = preflight(cfg)
    target = prepare_evaluation(
        cfg,
        args.model,
        tracking_uri=mlflow_tracking_uri(cfg.tracking.mlflow_tracking_uri),
        cache_root=str(tuneline_home() / "cache" / "models"),
    )
    from pipelines.runner import format_summary, run_evaluation

    return format_summary(run_evaluation(cfg, fingerprints, target, enable_cache=not args.no_cache))


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    """`generate`, `chat`, `export`: a trained model in use (tuneline/serve/commands.py)."""
    from tuneline.serve.commands import add_model_arguments

    add_model_arguments(sub)


def add_dashboard_command(sub: argparse._SubParsersAction) -> None:
    """`dashboard`: the MLflow UI and the local ZenML dashboard on 127.0.0.1 (tuneline/dashboard.py)."""
    cmd = sub.add_parser(
        "dashboard", help="start the MLflow UI and the local ZenML dashboard on 127.0.0.1; Ctrl-C stops both"
    )
    cmd.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI port (default 5000)")
    cmd.add_argument("--zenml-port", type=int, default=8237, help="ZenML dashboard port (default 8237)")
    cmd.add_argument("--no-zenml", action="store_true", help="start only the MLflow UI")
    cmd.add_argument("--config", help="project YAML: its tracking.mlflow_tracking_uri is the store shown")
    cmd.set_defaults(handler=run_dashboard_command)


def run_dashboard_command(args: argparse.Namespace) -> None:
    from pipelines.stack import configure_environment, prepare_dashboard
    from tuneline.dashboard import run_dashboards

    uri = None
    if args.config:
        from tuneline.config import load_config

        uri = load_config(args.config).tracking.mlflow_tracking_uri
    configure_environment()  # ZENML_CONFIG_PATH in TUNELINE_HOME, analytics off
    run_dashboards(
        mlflow_port=args.mlflow_port,
        zenml_port=args.zenml_port,
        with_zenml=not args.no_zenml,
        tracking_uri=uri,
        prepare_zenml=prepare_dashboard,
    )


def add_schedules_command(sub: argparse._SubParsersAction) -> None:
    """`schedules`: list the ZenML schedules, or delete one with its orchestrator job (pipelines/schedules.py)."""
    cmd = sub.add_parser("schedules", help="list ZenML schedules; --delete NAME removes one and its cron job")
    cmd.add_argument("--config", help="project YAML: only the schedules of its pipelines")
    cmd.add_argument(
        "--delete", metavar="NAME", help="delete this schedule and the orchestrator job that fires it"
    )
    cmd.add_argument(
        "--zenml-only",
        action="store_true",
        help="with --delete: the job is gone already; drop ZenML's record",
    )
    cmd.set_defaults(handler=run_schedules_command)


def run_schedules_command(args: argparse.Namespace) -> str:
    from pipelines.schedules import schedules_command

    return schedules_command(delete=args.delete, zenml_only=args.zenml_only, config_path=args.config)


def add_sweep_command(sub: argparse._SubParsersAction) -> None:
    """`sweep`: an Optuna study over config keys, then the best values through the normal pipeline."""
    cmd = sub.add_parser(
        "sweep", help="hyperparameter search (Optuna); registers only the best trial's model"
    )
    cmd.add_argument("--config", required=True, help="project YAML, e.g. configs/sft.yaml")
    cmd.add_argument("--sweep", required=True, help="sweep YAML, e.g. configs/sweeps/lorekeep-lr.yaml")
    cmd.add_argument(
        "--trials", type=int, help="finished trials to run the study up to (default: the file's)"
    )
    cmd.add_argument("--storage", help="study database URL (default: SQLite in TUNELINE_HOME)")
    cmd.add_argument("--study", help="study name (default: the sweep file's study_name or file name)")
    add_override_options(cmd, example="train.max_steps=60")
    cmd.set_defaults(handler=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> str:
    from pipelines.sweep import format_sweep, run_sweep

    result = run_sweep(
        args.config,
        args.sweep,
        overrides=args.overrides,
        trials=args.trials,
        storage=args.storage,
        study_name=args.study,
        enable_cache=not args.no_cache,
    )
    return format_sweep(result)


def add_stack_options(p: argparse.ArgumentParser) -> None:
    """`--stack RECIPE`, `--schedule CRON`, `--timezone TZ` on the main command (pipelines/cloud.py)."""
    p.add_argument("--stack", metavar="RECIPE", help="a stack recipe, e.g. configs/stacks/vertex-gpu.yaml")
    p.add_argument("--schedule", metavar="CRON", help='run on a cron schedule on --stack, e.g. "0 3 * * 1"')
    p.add_argument("--timezone", metavar="TZ", help="with --schedule on this machine: the crontab's CRON_TZ")


def add_stack_command(sub: argparse._SubParsersAction) -> None:
    """`stack register RECIPE [--name N] [--replace]`: a recipe's components and stack in ZenML."""
    cmd = sub.add_parser("stack", help="register a stack recipe (configs/stacks/*.yaml) with ZenML")
    verbs = cmd.add_subparsers(dest="stack_command", required=True)
    reg = verbs.add_parser("register", help="create the recipe's components and stack; never prompts")
    reg.add_argument("recipe", help="e.g. configs/stacks/kubernetes-gpu.yaml")
    reg.add_argument("--name", help="stack name (default: the recipe's name)")
    reg.add_argument("--replace", action="store_true", help="recreate the stack and components if they exist")
    reg.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    cmd.set_defaults(handler=run_stack_command)


def run_stack_command(args: argparse.Namespace) -> str:
    from pipelines.cloud import register_command

    return register_command(args.recipe, name=args.name, replace=args.replace)


# Each group adds its subcommands; a subcommand's `handler(args)` returns the text to print
# (or None when it printed as it went) and raises UserError for bad input (exit 2).
COMMAND_GROUPS = [
    add_registry_commands,
    add_evaluate_command,
    add_model_commands,
    add_dashboard_command,
    add_schedules_command,
    add_sweep_command,
    add_stack_command,
]


def parse_command_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="run.py", description="Operate the registry and use trained models.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMAND_GROUPS:
        add(sub)
    for cmd in sub.choices.values():
        cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def command_names() -> set[str]:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    for add in COMMAND_GROUPS:
        add(sub)
    return set(sub.choices)


def command_main(argv: list[str]) -> str | None:
    args = parse_command_args(argv)
    _setup_logging(args.verbose)
    return args.handler(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from tuneline.errors import UserError

    if argv and argv[0] in command_names():
        try:
            out = command_main(argv)
            if out is not None:
                print(out)
            return 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    args = parse_args(argv)
    _setup_logging(args.verbose)

    try:
        from tuneline.cli import dry_run, preflight, preview
        from tuneline.config import load_config

        cfg = load_config(args.config, args.overrides)
        if args.preview is not None:
            for line in preview(cfg, args.preview, as_json=args.json):
                print(line)
            return 0
        fingerprints, records = preflight(cfg)
        if args.stack or args.schedule:
            from pipelines.cloud import cloud_command

            print(cloud_command(cfg, fingerprints, **_cloud_args(args), argv=argv))
            return 0
        if args.dry_run:
            print(dry_run(cfg, records, fingerprints))
            return 0
        from pipelines.runner import format_summary, run_pipeline

        summary = run_pipeline(cfg, fingerprints, enable_cache=not args.no_cache)
        print(format_summary(summary))
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        user_error = _find_user_error(e)
        if user_error is not None:
            print(f"error: {user_error}", file=sys.stderr)
            return user_error.exit_code
        raise


def _cloud_args(args: argparse.Namespace) -> dict:
    return {
        "stack": args.stack,
        "schedule": args.schedule,
        "timezone": args.timezone,
        "dry_run": args.dry_run,
        "as_json": args.json,
        "enable_cache": not args.no_cache,
    }


def _setup_logging(verbose: bool) -> None:
    """tuneline's own messages to stderr; ZenML keeps its handler, so nothing prints twice."""
    log = logging.getLogger("tuneline")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("tuneline: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _find_user_error(e: BaseException):
    """ZenML wraps step exceptions; a user error raised inside a step still exits with 2."""
    from tuneline.errors import UserError

    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, UserError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {json.dumps(str(exc))[1:-1][:500]}", file=sys.stderr)
        sys.exit(1)
