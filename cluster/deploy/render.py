"""A service as a launchd plist (macOS) or a systemd unit (Linux), from one ServiceSpec."""

import plistlib

from .services import ServiceSpec

HEADER = "Written by `cluster deploy`; changes here are replaced on the next deploy."


def launchd_plist(spec: ServiceSpec) -> bytes:
    """A LaunchDaemon: starts at boot without a login, restarted whenever it exits."""
    job = {
        "Label": spec.label,
        "ProgramArguments": list(spec.argv),
        "EnvironmentVariables": dict(spec.env),
        "WorkingDirectory": spec.working_dir,
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "ProcessType": "Interactive",
        "StandardOutPath": spec.log_path,
        "StandardErrorPath": spec.log_path,
    }
    if spec.user:
        job["UserName"] = spec.user
    return plistlib.dumps(job, fmt=plistlib.FMT_XML, sort_keys=True)


def _quote(arg: str, command: bool = False) -> str:
    """systemd's quoting: double quotes, escaped specifiers (%); in a command line also `$`,
    which systemd expands as a variable even inside quotes."""
    arg = arg.replace("%", "%%")
    if command:
        arg = arg.replace("$", "$$")
    if arg and not any(c in arg for c in " \t\"'\\;$"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(spec: ServiceSpec) -> str:
    after = " ".join(["network-online.target", *(f"glm-cluster-{n}.service" for n in spec.after)])
    lines = [
        f"# {HEADER}",
        "[Unit]",
        f"Description={spec.description.replace('%', '%%')}",
        f"After={after}",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
    ]
    if spec.user:
        lines.append(f"User={spec.user}")
    lines.append(f"WorkingDirectory={spec.working_dir}")
    lines += [f"Environment={_quote(f'{k}={v}')}" for k, v in spec.env.items()]
    lines += [
        "ExecStart=" + " ".join(_quote(a, command=True) for a in spec.argv),
        "Restart=always",
        "RestartSec=5",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        f"StandardOutput=append:{spec.log_path}",
        "StandardError=inherit",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
