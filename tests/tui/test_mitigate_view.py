"""The Mitigate view does what it says: λ applied only when committed and valid, and shown; the
export's form (re-fit to r, r + intruders, merged) chosen in the view with the re-fit's error shown
before exporting; outputs with the usual file mode. (The sweep's own grid and the chosen λ on its
plot: test_pilot's tour of the view, which runs the probe once.)"""

import json
import os
import stat

import pytest
from app_driver import wait_for_scan

from spectui.tui.screens.mitigate import MitigateScreen, parse_sweep


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


async def open_mitigate(pilot):
    await wait_for_scan(pilot)
    await pilot.press("n", "s")
    assert isinstance(pilot.app.screen, MitigateScreen)
    await pilot.pause()


async def wait_for(pilot, condition, what: str, seconds: float = 60) -> None:
    for _ in range(int(seconds * 10)):
        if condition():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_an_invalid_lambda_is_never_previewed_or_exported(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await open_mitigate(pilot)
        screen = app.screen
        await pilot.press("l", "end", "backspace", "backspace", "backspace", "backspace", "3", "enter")
        assert screen.lam == 0.75  # "0" passed through on the way and "3" is out of range: neither applied
        state = text(app, "#lambda-state")
        assert "✗ must be a number from 0 to 2" in state and "previewing λ=0.75" in state
        assert "λ=0.75" in text(app, "#mitigate-summary")
        await pilot.press("tab", "e")
        await pilot.pause(0.5)
        assert screen.exported is None and not (tmp_path / "export").exists()
        assert any("not exported: the λ field holds '3'" in n for n in app.notified)
        await pilot.press("l", *"0.5", "enter")
        assert screen.lam == 0.5 and "previewing λ=0.5" in text(app, "#lambda-state")
        assert "· λ=0.5" in screen.query_one("#mitigate-preview").current.title


async def test_keys_read_together_edit_lambda_in_the_order_typed(make_app):
    """`tmux send-keys l End BSpace BSpace BSpace BSpace 3 Enter` arrives in one read: the field must end
    up holding 3 (Textual ran the backspaces after the 3, leaving it empty)."""
    from textual import events

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await open_mitigate(pilot)
        keys = [("l", "l"), ("end", None), *[("backspace", "\x7f")] * 4, ("3", "3"), ("enter", "\r")]
        for key, character in keys:
            app.post_message(events.Key(key, character))
        await pilot.pause(0.5)
        assert app.screen.query_one("#lambda").value == "3"
        assert app.screen.lam == 0.75 and "✗ must be a number from 0 to 2" in text(app, "#lambda-state")
        for key, character in (("tab", "\t"), ("e", "e")):  # Tab, then e: the e is the screen's, not the field's
            app.post_message(events.Key(key, character))
        await pilot.pause(0.5)
        assert app.screen.query_one("#lambda").value == "3" and app.screen.exported is None
        assert any("not exported: the λ field holds '3'" in n for n in app.notified)


def test_the_sweep_grid_is_checked():
    assert parse_sweep("0 0.5, 1 0.5") == [0.0, 0.5, 1.0]
    for bad in ("", "0 x", "0 3"):
        with pytest.raises(Exception, match="sweep"):
            parse_sweep(bad)


async def test_export_options_and_the_refit_error_are_shown_before_exporting(make_app, tmp_path):
    previous = os.umask(0o022)
    try:
        app = make_app()
        async with app.run_test(size=(120, 40)) as pilot:
            await open_mitigate(pilot)
            screen = app.screen
            await wait_for(pilot, lambda: "error up to" in text(app, "#refit"), "the refit error")
            assert text(app, "#refit").startswith("re-fit to rank r: error up to")
            screen.query_one("#rank-extra").value = True
            await wait_for(pilot, lambda: "re-fit to r + intruders: error up to 0.0%" in text(app, "#refit"),
                           "the refit error at rank r + intruders")
            await pilot.press("e")
            await wait_for(pilot, lambda: screen.exported is not None, "the export")
            adapter = screen.exported
            assert adapter.name.endswith("-rank-extra")
            config = json.loads((adapter / "adapter_config.json").read_text())
            assert config["rank_pattern"]  # modules grew to r + their intruders
            for file in adapter.iterdir():
                assert stat.S_IMODE(file.stat().st_mode) == 0o644, file  # safetensors' own mode is 0600
            screen.query_one("#merged").value = True
            await pilot.pause()
            assert screen.query_one("#rank-extra").disabled and "merged into the base" in text(app, "#refit")
            screen.exported = None
            await pilot.press("e")
            await wait_for(pilot, lambda: screen.exported is not None, "the merged export")
            assert screen.exported.name.endswith("-merged")
            assert (screen.exported / "model.safetensors").is_file()
            assert stat.S_IMODE((screen.exported / "model.safetensors").stat().st_mode) == 0o644
    finally:
        os.umask(previous)
