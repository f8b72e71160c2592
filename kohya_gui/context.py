"""What every tab needs from the running app: settings (paths, roots, defaults) and the job queue."""
from __future__ import annotations

from dataclasses import dataclass

from .jobqueue import JobQueue
from .settings import GuiSettings


@dataclass
class AppContext:
    settings: GuiSettings
    queue: JobQueue

    @property
    def python(self) -> str:
        return self.settings.python
