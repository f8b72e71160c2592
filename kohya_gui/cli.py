"""Command-line flags and the network-exposure rules, kept free of Gradio so refusals are instant.

Listening beyond this machine without a password prints a loud warning; `--share` (a public
gradio.live link) without one is refused.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

USERNAME_ENV, PASSWORD_ENV = "KOHYA_STUDIO_USERNAME", "KOHYA_STUDIO_PASSWORD"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m kohya_gui", description="Kohya-style training studio (web UI).")
    ap.add_argument("--listen", default="127.0.0.1",
                    help="address to serve on (0.0.0.0 = every interface, e.g. RunPod/Docker)")
    ap.add_argument("--server_port", type=int, default=7860, help="port (default 7860)")
    ap.add_argument("--share", action="store_true", help="public gradio.live link (needs --username/--password)")
    ap.add_argument("--headless", action="store_true",
                    help="no local browser/desktop assumed (never opens a window; pickers are in-page anyway)")
    ap.add_argument("--inbrowser", action="store_true", help="open the page in the default browser")
    ap.add_argument("--username", default="", help="login name (with --password)")
    ap.add_argument("--password", default="", help="login password (with --username); shows in `ps` — prefer "
                    f"--password_file or the {PASSWORD_ENV} environment variable")
    ap.add_argument("--password_file", default=None, help="read the login password from the first line of a file")
    ap.add_argument("--root_path", default=None, help="URL prefix when served behind a reverse proxy")
    ap.add_argument("--config", default=None, help="GUI defaults file (TOML; see docs/gui.md)")
    ap.add_argument("--data_root", action="append", default=[],
                    help="extra folder the file browser may show (repeatable)")
    ap.add_argument("--workspace", default=None,
                    help="where runs, the queue, demo files and your presets live (default: ./workspace)")
    return ap


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_credentials(args, environ=os.environ) -> str | None:
    """Fill args.username/password from --password_file or the environment (flags win); a refusal or None."""
    args.username = args.username or environ.get(USERNAME_ENV, "")
    if getattr(args, "password_file", None):
        try:
            lines = Path(args.password_file).expanduser().read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            return f"--password_file {args.password_file} cannot be read: {exc}"
        if not lines or not lines[0].strip():
            return f"--password_file {args.password_file} is empty; put the password on its first line."
        args.password = lines[0].strip()
    args.password = args.password or environ.get(PASSWORD_ENV, "")
    return None


def access_problems(args) -> tuple[list[str], str | None]:
    """(warnings to print, a refusal or None) for the network exposure the flags ask for."""
    refusal = resolve_credentials(args)
    if refusal:
        return [], refusal
    if bool(args.username) != bool(args.password):
        return [], "Give both --username and --password (or neither)."
    has_auth = bool(args.username and args.password)
    if args.share and not has_auth:
        return [], ("Refusing --share without --username and --password: a public link would let anyone "
                    "on the internet run training and browse your folders.")
    warnings = []
    if not is_loopback(args.listen) and not has_auth:
        warnings.append("\n" + "!" * 78 + "\n"
                        f"!!  WARNING: listening on {args.listen} WITHOUT a password.\n"
                        "!!  Anyone who can reach this port can start training and browse the allowed\n"
                        "!!  folders. Add --username NAME --password SECRET (or use an SSH tunnel).\n"
                        + "!" * 78 + "\n")
    return warnings, None
