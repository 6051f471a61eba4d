"""The playground (web/) in a real browser: Debian's headless Chromium, driven over the Chrome
DevTools Protocol with the `websockets` package (CI's venv already exists; Playwright would add
a Node toolchain and its own browser-download machinery for what a few CDP calls do here).

Checks, each against an independent truth: the page loads with no console error; a solve on a
37 x 37 maze (not a multiple of the 64-wide workgroup, nor of the 4-cell row padding) equals
the CLI's values.npy (`softvi solve`, same settings, run here) within 1e-4; a new alpha
changes the picture; the goal posterior of a shortest path (found here by BFS) to goal 0 ends
above 0.9 on goal 0 and starts at the uniform prior; at a finite horizon the posterior of a
walk equals `softvi infer`'s and seeded trajectories equal `softvi sample`'s (both act with
pi_t at step t); with WebGPU disabled the page says so and its CPU path (the f64 reference in
wasm) matches the CLI too. Saves target/playground.png and prints the time to the first
picture of a 255 x 255 maze.

Usage: python .ci/browser_test.py  (after web/build.sh and cargo build --release)
"""

import asyncio
import base64
import collections
import functools
import http.server
import itertools
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import websockets

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
SOFTVI = ROOT / "target" / "release" / "softvi"
SIZE, SEED = 37, 3
MAP = "den312d.map"
# Settings the page and the CLI both solve. At tol 1e-6 the f32 solves stop at f32's precision
# floor (residual <= 1e-6 max |V|, |V| <= 1 / (1 - gamma) = 20), which the CLI reports as an
# error bound of at most 5e-5: two such solves (or one and the f64 reference) differ by at
# most the sum of their bounds, within the 1e-4.
SETTINGS = {"alpha": 0.5, "gamma": 0.95, "tol": 1e-6, "slip": 0.05}
TOLERANCE = 1e-4
GPU_FLAGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"]
NO_GPU_FLAGS = ["--disable-features=WebGPU"]

failures = []
passes = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    (passes if ok else failures).append(what)


def read_json(url):
    """The JSON document at `url`."""
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Quiet(http.server.SimpleHTTPRequestHandler):
    """The standard handler, without a log line per request."""

    def log_message(self, *args):
        pass


def serve(directory):
    """A static server of `directory` on a free loopback port, in a thread."""
    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Browser:
    """One headless Chromium with one page, spoken to over CDP."""

    def __init__(self, flags):
        self.port = free_port()
        self.profile = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen(
            [
                "chromium",
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu-sandbox",
                f"--remote-debugging-port={self.port}",
                f"--user-data-dir={self.profile.name}",
                "--window-size=1400,900",
                *flags,
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.next_id = 0
        self.replies = {}
        self.errors = []

    async def open(self):
        deadline = time.time() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{self.port}/json/list"
                targets = await asyncio.to_thread(read_json, url)
                pages = [t for t in targets if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("chromium did not open its DevTools port in 60 s")
            await asyncio.sleep(0.2)
        self.ws = await websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        self.reader = asyncio.create_task(self.read())
        for method in ["Runtime.enable", "Log.enable", "Page.enable"]:
            await self.call(method)

    async def read(self):
        async for text in self.ws:
            m = json.loads(text)
            if "id" in m:
                self.replies[m["id"]].set_result(m)
            elif m.get("method") == "Runtime.exceptionThrown":
                self.errors.append(m["params"]["exceptionDetails"].get("text", "exception"))
            elif m.get("method") == "Runtime.consoleAPICalled" and m["params"]["type"] == "error":
                self.errors.append(" ".join(str(a.get("value")) for a in m["params"]["args"]))
            elif m.get("method") == "Log.entryAdded" and m["params"]["entry"]["level"] == "error":
                self.errors.append(m["params"]["entry"]["text"])

    async def call(self, method, **params):
        self.next_id += 1
        reply = asyncio.get_running_loop().create_future()
        self.replies[self.next_id] = reply
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        m = await asyncio.wait_for(reply, 300)
        if "error" in m:
            raise RuntimeError(f"{method}: {m['error']}")
        return m["result"]

    async def eval(self, expression):
        """The JSON value of an awaited JavaScript expression; a thrown error raises."""
        r = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:60]}...: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def goto(self, url):
        """Opens `url` and waits for the playground's first solve; the backend line."""
        await self.load(url)
        return await self.eval(
            "window.playground.ready.then(() => document.getElementById('backend').textContent)"
        )

    async def load(self, url):
        """Opens `url` and waits until its document has loaded."""
        await self.call("Page.navigate", url=url)
        deadline = time.time() + 60
        while True:
            try:
                here = await self.eval("location.href + ' ' + document.readyState")
                if here == f"{url} complete":
                    return
            except RuntimeError:
                pass  # the old document went away under the evaluation
            if time.time() > deadline:
                raise RuntimeError(f"{url} did not load in 60 s")
            await asyncio.sleep(0.1)

    async def close(self):
        await self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.profile.cleanup()


def cli_values(world, width, goals, out):
    """`softvi solve`'s values.npy over `world` (its flags) with `goals` (cells)."""
    args = [str(SOFTVI), "solve", *world]
    for g in goals:
        args += ["--goal", f"{g % width},{g // width}"]
    args += ["--alpha", str(SETTINGS["alpha"]), "--gamma", str(SETTINGS["gamma"])]
    if "--horizon" not in world:
        args += ["--tol", str(SETTINGS["tol"])]
    args += ["--slip", str(SETTINGS["slip"]), "--out", out]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return np.load(pathlib.Path(out) / "values.npy").reshape(-1)


def page_values(result):
    return np.array([np.nan if v is None else v for v in result], dtype=np.float64)


def compare(page, cli, what):
    same_nan = np.array_equal(np.isnan(page), np.isnan(cli))
    both = ~np.isnan(cli)
    diff = float(np.max(np.abs(page[both] - cli[both])))
    check(same_nan and diff <= TOLERANCE, f"{what}: max |page - CLI| = {diff:.2e} <= {TOLERANCE}")
    return diff


def legal(walls, a, b):
    """Whether one step from cell `a` to `b` is a stay or a legal 8-connected move."""
    (ra, ca), (rb, cb) = divmod(a, SIZE), divmod(b, SIZE)
    if max(abs(ra - rb), abs(ca - cb)) > 1 or walls[b]:
        return False
    return ra == rb or ca == cb or not (walls[ra * SIZE + cb] or walls[rb * SIZE + ca])


def shortest_path(walls, start, goal):
    """BFS over 4-neighbour moves of the free cells: the known walk to `goal`."""
    prev = {start: None}
    queue = collections.deque([start])
    while queue:
        c = queue.popleft()
        if c == goal:
            break
        r, k = divmod(c, SIZE)
        for dr, dk in [(-1, 0), (0, 1), (1, 0), (0, -1)]:
            n = (r + dr) * SIZE + k + dk
            if 0 <= r + dr < SIZE and 0 <= k + dk < SIZE and not walls[n] and n not in prev:
                prev[n] = c
                queue.append(n)
    path, c = [], goal
    while c is not None:
        path.append(c)
        c = prev[c]
    return path[::-1]


SOLVE = "window.playground.solveWith({s}).then(r => Array.from(r.values))"

# Settings of the finite-horizon sampling check: a low temperature and gamma near 1 (the
# page's slider stops at 0.999), so whether goal 0 is worth heading for depends on the steps
# left and pi_t differs from pi_0 (see finite_horizon_checks); the trajectories start
# FROM_GOAL steps from goal 0 along a shortest path.
FINITE = {"alpha": 0.1, "gamma": 0.999, "slip": 0.05, "horizon": 40}
FROM_GOAL = 36
# Seeds of the trajectories compared with `softvi sample`: on this maze a page acting with
# pi_0 draws a different trajectory for 4 of them (measured by that mutation).
SAMPLE_SEEDS = range(1, 11)
# Page and CLI posteriors both come from f32 policies of two engines (or the f64 reference)
# that agree to about 1e-6 relative; a walk's log-likelihood sums its steps' (under 100
# here), so the posteriors differ by about 100 * 1e-6 * p(1 - p) < 1e-4 (the measured figure
# is printed). Acting with pi_0 instead of pi_t moves them by 6e-2 here (that mutation).
POSTERIOR_TOLERANCE = 1e-4


def cli_run(command, world, goals, settings, extra, out):
    """Runs `softvi COMMAND` on `world` with `goals` and `settings` (a finite horizon)."""
    args = [str(SOFTVI), command, *world]
    for g in goals:
        args += ["--goal", f"{g % SIZE},{g // SIZE}"]
    for flag in ["alpha", "gamma", "slip", "horizon"]:
        args += [f"--{flag}", str(settings[flag])]
    args += [*extra, "--out", out, "--quiet"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


async def finite_horizon_checks(browser, maze, walls, goals, where):
    """At a finite horizon T the page samples and infers with pi_t at step t, as the CLI.

    Posterior: the first T steps of a shortest walk to goal 0 from X,Y = 1,1 (L steps), T =
    3L/4 at SETTINGS: late in the horizon goal 0 is out of reach and pi_t near uniform, where
    pi_0 (T steps left) still heads for it. Trajectories (FINITE): from FROM_GOAL = 36 steps
    off goal 0 with T = 40, heading for it is only just worth its cost (each step costs 1,
    wandering earns alpha times the policy's entropy), so at step t pi_t hesitates where pi_0
    heads on. Both checks fail if the page acted with pi_0 (checked by that mutation).
    Returns the posterior's max difference to `softvi infer`.
    """
    full = shortest_path(walls, SIZE + 1, goals[0])
    settings = {**SETTINGS, "horizon": (3 * (len(full) - 1)) // 4}
    walk = full[: settings["horizon"] + 1]
    await browser.eval(SOLVE.format(s=json.dumps({**settings, "goals": goals})))
    rows = await browser.eval(f"window.playground.inferWalk({walk}).then(Array.from)")
    rows = np.array(rows).reshape(-1, len(goals))
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "walk.txt"
        path.write_text("".join(f"{c % SIZE} {c // SIZE}\n" for c in walk))
        out = os.path.join(tmp, "out")
        cli_run("infer", maze, goals, settings, ["--trajectory", str(path)], out)
        cli_rows = np.load(pathlib.Path(out) / "posterior.npy")
    diff = float(np.max(np.abs(rows - cli_rows))) if rows.shape == cli_rows.shape else np.inf
    check(
        diff <= POSTERIOR_TOLERANCE,
        f"{where}: horizon {settings['horizon']}, posterior of a {len(walk) - 1}-step walk vs "
        f"softvi infer: max |page - CLI| = {diff:.2e} <= {POSTERIOR_TOLERANCE}",
    )
    horizon = FINITE["horizon"]
    start = full[len(full) - 1 - FROM_GOAL]
    await browser.eval(SOLVE.format(s=json.dumps({**SETTINGS, **FINITE, "goals": goals})))
    same = 0
    for seed in SAMPLE_SEEDS:
        path = await browser.eval(f"window.playground.trajectory(0, {start}, {horizon}, {seed})")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out")
            at = f"{start % SIZE},{start // SIZE}"
            extra = ["--start", at, "--episodes", "1", "--seed", str(seed)]
            cli_run("sample", maze, goals, FINITE, extra, out)
            states = np.load(pathlib.Path(out) / "states.npy")[0, 0]
        same += path == [int(c) for c in states if c >= 0]
    check(
        same == len(SAMPLE_SEEDS),
        f"{where}: horizon {horizon}, {same} of {len(SAMPLE_SEEDS)} seeded trajectories from "
        f"X,Y = {start % SIZE},{start // SIZE} equal softvi sample's",
    )
    return diff


async def main():
    server = serve(WEB)
    base = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    # Goals: the page's defaults (opposite corners of the maze's odd lattice).
    goals = [(SIZE - 2) * SIZE + SIZE - 2, SIZE + SIZE - 2]
    maze = ["--maze", f"{SIZE}x{SIZE}", "--maze-seed", str(SEED)]
    with tempfile.TemporaryDirectory() as tmp:
        cli = cli_values(maze, SIZE, goals, os.path.join(tmp, "out"))

    browser = Browser(GPU_FLAGS)
    try:
        await browser.open()
        backend = await browser.goto(f"{base}?size={SIZE}&seed={SEED}")
        print("page:", backend)
        check("WebGPU (" in backend, "the page runs on WebGPU")
        spec = json.dumps({**SETTINGS, "goals": goals})
        values = page_values(await browser.eval(SOLVE.format(s=spec)))
        gpu_diff = compare(values, cli, f"WebGPU solve of a {SIZE}x{SIZE} maze vs softvi solve")
        # Forward messages: `softvi solve --horizon T --occupancy --start` summed over t.
        occ = page_values(await browser.eval(f"window.playground.occupancy({SIZE + 1}, 60)"))
        with tempfile.TemporaryDirectory() as tmp:
            world = [*maze, "--horizon", "60", "--occupancy", "--start", "1,1"]
            out = os.path.join(tmp, "out")
            cli_values(world, SIZE, goals, out)
            cli_occ = np.load(pathlib.Path(out) / "occupancy.npy").sum(axis=1).reshape(-1)
        compare(occ, cli_occ, "occupancy over 60 steps from X,Y = 1,1 vs softvi solve")
        # A sampled trajectory: legal moves only (8-connected, no corner cutting), ending
        # early only on its goal.
        walls = await browser.eval("Array.from(window.playground.state.walls)")
        path = await browser.eval(f"window.playground.trajectory(0, {SIZE + 1}, 400, 5)")
        check(
            path[0] == SIZE + 1
            and all(legal(walls, a, b) for a, b in itertools.pairwise(path))
            and (len(path) == 401 or path[-1] == goals[0]),
            f"a sampled trajectory ({len(path) - 1} steps) moves legally, stops only on goal 0",
        )
        # A bundled MovingAI map: 65 wide (not a multiple of 4: the padded rows), 81 high.
        await browser.eval(f"window.playground.loadMap('{MAP}')")
        map_goals = await browser.eval("window.playground.state.goals")
        map_values = page_values(await browser.eval(SOLVE.format(s=json.dumps(SETTINGS))))
        with tempfile.TemporaryDirectory() as tmp:
            world = ["--map", str(ROOT / "tests" / "data" / "maps" / MAP)]
            map_cli = cli_values(world, 65, map_goals, os.path.join(tmp, "out"))
        compare(map_values, map_cli, f"WebGPU solve of {MAP} (65x81) vs softvi solve")
        await browser.goto(f"{base}?size={SIZE}&seed={SEED}")
        await browser.eval(SOLVE.format(s=spec))
        before = await browser.eval("window.playground.mapImage()")
        await browser.eval(SOLVE.format(s=json.dumps({"alpha": 3.0})))
        after = await browser.eval("window.playground.mapImage()")
        check(before != after, "alpha 0.5 -> 3 changes the value map")
        await browser.eval(SOLVE.format(s=spec))
        walls = await browser.eval("Array.from(window.playground.state.walls)")
        walk = shortest_path(walls, SIZE + 1, goals[0])
        rows = await browser.eval(f"window.playground.inferWalk({walk}).then(Array.from)")
        rows = np.array(rows).reshape(-1, len(goals))
        check(np.allclose(rows[0], 0.5, atol=1e-6), "the posterior starts at the uniform prior")
        check(
            rows[-1, 0] > 0.9,
            f"posterior of a {len(walk) - 1}-step shortest walk to goal 0 ends at "
            f"{rows[-1, 0]:.4f} > 0.9 on it",
        )
        shot = await browser.call("Page.captureScreenshot", format="png")
        png = ROOT / "target" / "playground.png"
        png.write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {png}")
        gpu_posterior = await finite_horizon_checks(browser, maze, walls, goals, "WebGPU")
        check(not browser.errors, f"no console error on the WebGPU page ({browser.errors})")
        # Time to first picture of a 255 x 255 maze: navigation start to the first drawn map.
        await browser.goto(f"{base}?size=255&seed=0")
        ms = await browser.eval("window.playground.state.firstPictureMs")
        status = await browser.eval("document.getElementById('status').textContent")
        print(f"time to first picture, 255x255 maze, WebGPU (SwiftShader): {ms / 1000:.2f} s")
        print(f"  its solve: {status}")
        stall = await browser.eval("window.playground.state.maxStallMs")
        check(
            stall < 1000, f"the page kept running during that solve (longest stall {stall:.0f} ms)"
        )
        live = await browser.eval(
            "[window.playground.state.liveDraws, window.playground.state.firstLiveMs]"
        )
        check(live[0] >= 2, f"the map was drawn {live[0]} times as the solve ran")
        print(f"  first values drawn while solving: {live[1] / 1000:.2f} s after navigation")
        # Past the page's budget for every step's policy (255 x 255, two goals, 8 moves, T =
        # 120: 1.2 GB by the library's estimate, over 1 GiB) sampling refuses and says why.
        await browser.eval(SOLVE.format(s=json.dumps({"horizon": 120})))
        try:
            await browser.eval("window.playground.trajectory(0, 256, 120, 1)")
            refused = "nothing: it sampled"
        except RuntimeError as e:
            refused = str(e)
        check(
            "over the page's budget" in refused,
            f"255x255 at horizon 120, sampling refuses: {refused[refused.find('Error') :][:150]}",
        )
        check(not browser.errors, f"no console error on the 255x255 page ({browser.errors})")
        # A 1025 x 1025 world: the page keeps running while it solves, and a newer solve
        # (a small map) cancels it at its next progress report.
        await browser.load(f"{base}?size=1025&seed=0")
        status = await browser.eval(
            "(async () => { const s = document.getElementById('status');"
            " while (!s.textContent.startsWith('solving'))"
            " await new Promise(r => setTimeout(r, 100));"
            " return s.textContent; })()"
        )
        stall = await browser.eval("window.playground.state.maxStallMs")
        check(stall < 1000, f"1025x1025 ({status}): longest stall {stall:.0f} ms")
        started = time.time()
        newer = await browser.eval(
            f"window.playground.loadMap('{MAP}')"
            ".then(() => window.playground.solveWith({})).then(r => r && r.iterations)"
        )
        check(
            newer is not None and newer > 0,
            f"a newer solve replaced the 1025x1025 one ({time.time() - started:.1f} s)",
        )
        check(not browser.errors, f"no console error on the 1025x1025 page ({browser.errors})")
    finally:
        await browser.close()

    browser = Browser(NO_GPU_FLAGS)
    try:
        await browser.open()
        backend = await browser.goto(f"{base}?size={SIZE}&seed={SEED}")
        print("page:", backend)
        check("No WebGPU" in backend, "without WebGPU the page says so")
        values = page_values(await browser.eval(SOLVE.format(s=spec)))
        compare(values, cli, "CPU fallback (f64 reference in wasm) vs softvi solve")
        rows = await browser.eval(f"window.playground.inferWalk({walk}).then(Array.from)")
        rows = np.array(rows).reshape(-1, len(goals))
        check(rows[-1, 0] > 0.9, f"CPU fallback: the walk's posterior ends at {rows[-1, 0]:.4f}")
        cpu_posterior = await finite_horizon_checks(browser, maze, walls, goals, "CPU fallback")
        check(not browser.errors, f"no console error on the CPU page ({browser.errors})")
    finally:
        await browser.close()
    server.shutdown()
    print(f"WebGPU max abs diff to the CLI: {gpu_diff:.2e}")
    print(
        f"finite-horizon posterior, max abs diff to softvi infer: WebGPU {gpu_posterior:.2e}, "
        f"CPU fallback {cpu_posterior:.2e}"
    )
    print(f"browser: {len(passes)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
