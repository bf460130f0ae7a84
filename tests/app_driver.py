"""Helpers for driving the inspector with Textual's Pilot."""

from spectui.tui.app import REFRESH_SECONDS


async def wait_for_scan(pilot, timeout: float = 60.0) -> None:
    waited = 0.0
    while not pilot.app.inspector.finished:
        await pilot.pause(0.1)
        waited += 0.1
        assert waited < timeout, "scan did not finish"
    await pilot.pause(2 * REFRESH_SECONDS)  # the batched refresh


def record_notifications(app) -> None:
    """Keep every notification's text in `app.notified` (screens and widgets notify through the app)."""
    app.notified = []
    notify = app.notify

    def recording(message, *args, **kwargs):
        app.notified.append(str(message))
        return notify(message, *args, **kwargs)

    app.notify = recording
