"""The CLI edge: the one place that maps exceptions to a stderr line and an exit code.

Every console script calls `run(group)`. User errors (OrchestratorError) print their one-line
message with the command's prefix (engine.errors.format_line); click's usage errors become one
such line with exit 1 (the contract's code for usage errors) instead of click's three-line
block with exit 2; anything else is internal: exit 70, traceback with ORCH_DEBUG=1.
"""

import os
import sys

import click

from engine.errors import ExitCode, OrchestratorError, format_line, prefix_for

PROG_ENV = "ORCH_PROG"  # set by the bash shims so messages name the script the user called


def prog_name(default):
    return os.environ.get(PROG_ENV) or default


def echo_lines(lines):
    for line in lines:
        click.echo(line)


INVOKED = []  # the arguments of the command being run (a detached run starts itself again with them)


def run(group, default_prog, args=None):
    """Invoke a click group and return the process exit code; never raises (but see ORCH_DEBUG).

    The one place that turns exceptions into a stderr line and an exit code: user errors
    (OrchestratorError) print their message with the command's prefix and exit with their code;
    anything else is internal (ExitCode.INTERNAL), one line, the traceback with ORCH_DEBUG=1.
    """
    argv = sys.argv[1:] if args is None else list(args)
    INVOKED[:] = argv
    prefix = prefix_for(default_prog, argv)
    try:
        result = group.main(args=args, prog_name=prog_name(default_prog), standalone_mode=False)
    except OrchestratorError as exc:
        click.echo(exc.line_for(prefix), err=True)
        return int(exc.exit_code)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return ExitCode.INTERRUPTED
    except click.ClickException as exc:
        click.echo(format_line(exc.format_message(), prefix), err=True)
        return ExitCode.ERROR
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head -1`): not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return ExitCode.OK
    except OSError as exc:  # the filesystem said no (read-only, full disk, permissions)
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        click.echo(format_line(f"{exc.strerror or exc}{where}", prefix), err=True)
        return ExitCode.ERROR
    except Exception as exc:  # a bug or an unexpected tool failure: one line, the traceback on request
        if os.environ.get("ORCH_DEBUG"):
            raise
        click.echo(format_line(f"internal error ({type(exc).__name__}: {exc}); "
                               "set ORCH_DEBUG=1 for the traceback", prefix), err=True)
        return ExitCode.INTERNAL
    return int(result) if isinstance(result, int) else ExitCode.OK


def exit_with(group, default_prog):
    """Run the command and end the process with its code. Once the command is done and no
    thread of ours is left working, the interpreter's own tear-down (every module and object
    freed, some 20-50 ms) is skipped: the atexit handlers run and the output is flushed, then
    the process ends, as it would after that tear-down (everything of ours is written and
    closed by then)."""
    code = run(group, default_prog)
    import atexit
    import threading

    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # (None: started with that descriptor closed, `cmd >&-`)
                stream.flush()
    except (OSError, ValueError):  # a reader gone (`| head -1`) or a closed stream: the usual way
        sys.exit(code)
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)  # (a thread still working is joined the usual way)
    os._exit(int(code))


class ContractGroup(click.Group):
    """A group whose unknown subcommands fall back to a named command (e.g. `help`).

    The originals print help and exit 0 for any unknown word (state-transition) or print
    usage and exit 1 (pool-manager); `fallback` names the command that reproduces that.
    """

    def __init__(self, *args, fallback=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fallback = fallback

    def parse_args(self, ctx, args):
        if self.fallback and args and args[0].startswith("-"):
            args = [self.fallback] + list(args[1:])  # `--help`, `-x`: the fallback too
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx, args):
        if self.fallback and args and args[0] not in self.commands:
            return self.fallback, self.commands[self.fallback], args[1:]
        return super().resolve_command(ctx, args)


# A context setting for commands whose arguments are free-form data: "-5" or "-rf" is a
# value, not an unknown option.
DATA_ARGS = {"ignore_unknown_options": True, "help_option_names": []}


def help_group(text):
    """A contract-style group: no subcommand, `help`, an unknown word or any option print
    TEXT and exit 0 (state-transition.sh and checkpoint-manager.sh behave so)."""
    @click.group(cls=ContractGroup, fallback="help", invoke_without_command=True,
                 context_settings={"help_option_names": []})
    @click.pass_context
    def group(ctx):
        if ctx.invoked_subcommand is None:
            click.echo(text)

    @group.command("help", context_settings=dict(DATA_ARGS, allow_extra_args=True))
    def help_cmd():
        click.echo(text)

    return group
