"""The login check Gradio calls, with a brake on guessing: after MAX_FAILURES wrong passwords within
WINDOW_S seconds every login is refused for LOCKOUT_S seconds (the right password too — a guesser
cannot tell when it hit), and each failure is logged. Gradio's auth callback is not told the client's
address, so the brake is for the whole server; the owner waits a minute at worst.
"""
from __future__ import annotations

import hmac
import sys
import threading
import time

MAX_FAILURES = 5
WINDOW_S = 60.0
LOCKOUT_S = 60.0


class RateLimitedLogin:
    def __init__(self, username: str, password: str, clock=time.monotonic):
        self._user, self._password = username.encode(), password.encode()
        self._clock = clock
        self._failures: list[float] = []
        self._locked_until = 0.0
        self._lock = threading.Lock()

    def __call__(self, username: str, password: str) -> bool:
        now = self._clock()
        with self._lock:
            if now < self._locked_until:
                return False
            ok = hmac.compare_digest(str(username).encode(), self._user) & \
                hmac.compare_digest(str(password).encode(), self._password)
            if ok:
                return True
            self._failures = [t for t in self._failures if now - t < WINDOW_S] + [now]
            if len(self._failures) >= MAX_FAILURES:
                self._locked_until, self._failures = now + LOCKOUT_S, []
                print(f"[kohya_gui] {MAX_FAILURES} failed logins within {WINDOW_S:.0f} s: logins are refused for "
                      f"{LOCKOUT_S:.0f} s", file=sys.stderr, flush=True)
            else:
                print(f"[kohya_gui] failed login for user {str(username)[:40]!r}", file=sys.stderr, flush=True)
            return False
