"""Pausing the background scan, and taking it up again in a later session from the cache."""

from app_driver import wait_for_scan


async def test_p_pauses_the_scan_and_says_so_and_p_again_goes_on(make_app, tmp_path):
    app = make_app(cache=tmp_path / "cold")
    async with app.run_test(size=(100, 30)) as pilot:
        while not app.inspector.progress[0]:
            await pilot.pause(0.05)
        await pilot.press("P")
        await pilot.pause(0.6)  # the matrices in hand finish, and the status polls
        done = app.inspector.progress[0]
        label = app.screen.query_one("#scan-label")
        # counts phase, then spectra phase (the status line says both)
        assert app.inspector.paused and str(label.render()).startswith("paused · counts ")
        assert " · spectra " in str(label.render())
        await pilot.pause(1.0)
        assert app.inspector.progress[0] == done and not app.inspector.finished
        await pilot.press("P")
        await wait_for_scan(pilot)
        assert not app.inspector.paused


async def test_a_scan_quit_half_way_is_taken_up_from_the_cache(make_app, tmp_path):
    cache = tmp_path / "cache"
    app = make_app(cache=cache)
    def spectra_done() -> int:  # the phase whose results are cached whole
        return dict((phase, done) for phase, done, _ in app.inspector.phases).get("spectra", 0)

    async with app.run_test(size=(100, 30)) as pilot:
        while spectra_done() < 2:
            await pilot.pause(0.05)
        app.inspector.pause(True)
        await pilot.pause(0.5)
        done = spectra_done()
        await app.run_action("quit")
    assert 0 < done < app.inspector.progress[1] / 2

    again = make_app(cache=cache)
    async with again.run_test(size=(100, 30)) as pilot:
        await wait_for_scan(pilot)
        status = str(again.screen.query_one("#scan-label").render())
        assert again.inspector.from_cache >= done and f"· {again.inspector.from_cache} cached" in status
