"""The docs site and JupyterLab as a reader sees them: Debian's chromium, headless, driven by Playwright.

Both servers listen on 127.0.0.1 only. Screenshots go to $EMCAPS_ARTIFACTS (default tests/artifacts/, not committed).
Needs `chromium` (apt-get install chromium; `.ci/run` installs it) and the docs assets (`python tools/docs.py --fetch`, once).
"""
import functools, http.server, json, os, pathlib, re, secrets, shutil, socket, subprocess, sys, tempfile, threading, time, urllib.request
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARTIFACTS = pathlib.Path(os.environ.get('EMCAPS_ARTIFACTS', ROOT / 'tests' / 'artifacts'))
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run', '--disable-dev-shm-usage']
pytestmark = pytest.mark.browser


def _chromium() -> str:
    exe = os.environ.get('CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
    if not exe:
        pytest.fail("chromium not found: apt-get install chromium (or set CHROMIUM=path), or deselect with -m 'not browser'")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    "A fresh headless chromium profile."
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path_factory.mktemp('profile')), executable_path=_chromium(),
                                                    headless=True, args=CHROMIUM_ARGS, viewport={'width': 1280, 'height': 900})
        yield ctx
        ctx.close()


def _watch(page, base):
    "Collect console errors, page errors and requests that leave `base`."
    seen = {'errors': [], 'outside': []}
    page.on('console', lambda m: m.type == 'error' and seen['errors'].append(m.text))
    page.on('pageerror', lambda e: seen['errors'].append(str(e)))
    page.on('request', lambda r: not r.url.startswith((base, 'data:', 'blob:')) and seen['outside'].append(r.url))
    return seen


# --- the offline docs site ----------------------------------------------------------------------------------------------

def _page_name(nb: pathlib.Path) -> str:
    "nbdev's page name for a notebook: its file name without the number prefix."
    return re.sub(r'^\d+[a-z]?_', '', nb.stem) + '.html'


NOTEBOOKS = sorted((ROOT / 'nbs').glob('[0-9]*.ipynb'))
PAGES = ['index.html'] + [_page_name(nb) for nb in NOTEBOOKS]


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "Build the offline site with the documented command, then serve it on 127.0.0.1."
    out = tmp_path_factory.mktemp('site') / '_docs'
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'docs.py'), '--out', str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f'docs build: {time.time() - t0:.1f} s;', r.stdout.strip().splitlines()[-1])
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    handler = functools.partial(Quiet, directory=str(out))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield out, f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown()


def test_site_pages_exist(site):
    out, _ = site
    assert sorted(p.name for p in out.glob('*.html')) == sorted(PAGES)
    assert (out / 'site_libs' / 'katex' / 'katex.min.js').is_file() and (out / 'site_libs' / 'widgets' / 'embed.js').is_file()
    # nothing in the site points at a CDN: every script and stylesheet is local
    for page in out.glob('*.html'):
        for url in re.findall(r'<(?:script|link)[^>]*(?:src|href)="(https?://[^"]+)"', page.read_text()):
            pytest.fail(f'{page.name} loads {url}')


# JavaScript: the text of the page's main content outside code, maths and scripts (where raw TeX would show)
_PROSE = """() => { const out = []; const w = document.createTreeWalker(document.querySelector('main'), NodeFilter.SHOW_TEXT);
  while (w.nextNode()) { const n = w.currentNode;
    if (!n.parentElement.closest('pre, code, .katex, script, style, .sourceCode')) out.push(n.textContent); }
  return out.join(' '); }"""


@pytest.mark.parametrize('name', PAGES)
def test_site_page(site, browser, name):
    out, base = site
    page = browser.new_page()
    seen = _watch(page, base)
    page.goto(base + name, wait_until='networkidle')
    page.wait_for_timeout(200)   # KaTeX's auto-render runs on DOMContentLoaded, deferred
    page.screenshot(path=str(ARTIFACTS / f'site-{name[:-5]}.png'))
    assert not seen['errors'], seen['errors']
    assert not seen['outside'], f'requests leaving 127.0.0.1: {seen["outside"]}'
    # the sidebar lists every notebook, in notebook order
    links = page.eval_on_selector_all('#quarto-sidebar a.sidebar-link', 'els => els.map(e => e.getAttribute("href"))')
    assert links == PAGES
    # maths is typeset: no TeX delimiters left in the prose, and KaTeX drew something where the notebook has maths
    prose = page.evaluate(_PROSE)
    for pat in (r'\$[^$\n]*\$', r'\\\(', r'\\\[', r'\\[a-zA-Z]{2,}'):   # $…$, \( \[ and any \command
        assert not re.search(pat, prose), f'raw TeX in {name}: {re.search(pat, prose).group(0)[:80]!r}'
    # markdown printed by `output: asis` cells (the index's results) is rendered, not shown as text
    raw_md = re.search(r'\*\*\S.{0,60}', prose)
    assert not raw_md, f'raw markdown in {name}: {raw_md and raw_md.group(0)!r}'
    src = (ROOT / 'nbs' / ('index.ipynb' if name == 'index.html' else next(nb.name for nb in NOTEBOOKS if _page_name(nb) == name)))
    md = ''.join(''.join(c['source']) for c in json.loads(src.read_text())['cells'] if c['cell_type'] == 'markdown')
    if re.search(r'\$[^$\n]+\$', md): assert page.locator('.katex').count() > 0, f'{name} has maths but no KaTeX output'
    # every picture loaded (inline plots and the figures under results/)
    broken = page.eval_on_selector_all('main img', 'els => els.filter(e => !(e.complete && e.naturalWidth > 0)).map(e => e.src.slice(0, 80))')
    assert not broken, broken
    page.close()


def test_site_static_explorer(site, browser):
    "The explorer on the site, without a kernel: each control swaps in the figure precomputed for its values."
    out, base = site
    manifest = {r['file']: r for r in json.loads((out / 'explorer' / 'manifest.json').read_text())}
    page = browser.new_page()
    seen = _watch(page, base)
    page.goto(base + 'routing_explorer.html', wait_until='networkidle')
    root = page.locator('figure.static-explorer')
    root.scroll_into_view_if_needed()
    def shown():
        page.wait_for_function("() => { const i = document.querySelector('figure.static-explorer img'); return i.complete && i.naturalWidth > 0; }")
        file = root.get_attribute('data-shown')
        assert page.locator('figure.static-explorer img').get_attribute('src') == 'explorer/' + file
        r = manifest[file]   # the figure render_grid drew for these values, its title naming them
        want = f"λ = {r['lambda']:g}, {r['iterations']} iteration(s), the {r['cost']}'s cost"
        assert want in r['title'] and root.locator('figcaption').text_content() == want
        return file, r
    def move(name, value):
        page.evaluate("([n, v]) => { const e = document.querySelector(`figure.static-explorer [name=${n}]`); e.value = v;"
                      " e.dispatchEvent(new Event(e.tagName === 'SELECT' ? 'change' : 'input')); }", [name, value])
    first, r = shown()
    assert (r['lambda'], r['iterations'], r['cost']) == (1.0, 3, 'article')   # the notebook's defaults
    seen_files = {first}
    for name, value, expect in (('lambda', '6', ('lambda', 10.0)), ('iterations', '7', ('iterations', 7)), ('cost', 'paper', ('cost', 'paper')),
                                ('lambda', '0', ('lambda', 0.01)), ('iterations', '1', ('iterations', 1))):
        move(name, value)
        file, r = shown()
        assert r[expect[0]] == expect[1], (name, value, r)
        assert file not in seen_files, f'{name} = {value} showed a figure already shown'
        seen_files.add(file)
        assert page.locator(f'figure.static-explorer output[for={name}]').count() == 0 or \
            page.locator(f'figure.static-explorer output[for={name}]').text_content() == (f"{r['lambda']:g}" if name == 'lambda' else str(r['iterations']))
    assert len({(out / 'explorer' / f).read_bytes() for f in seen_files}) == len(seen_files), 'different values, different pictures'
    page.screenshot(path=str(ARTIFACTS / 'site-explorer.png'))
    assert not seen['errors'] and not seen['outside'], seen
    page.close()


# --- JupyterLab: run the routing explorer and move its sliders -----------------------------------------------------------

@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "`jupyter lab` on a free 127.0.0.1 port with a token, serving a copy of the explorer notebook."
    work = tmp_path_factory.mktemp('lab')
    shutil.copy(ROOT / 'nbs' / '03a_routing_explorer.ipynb', work / 'explorer.ipynb')
    settings = work / '.settings' / '@jupyterlab' / 'notebook-extension'
    settings.mkdir(parents=True)   # render every cell (JupyterLab 4 otherwise virtualises cells off screen)
    (settings / 'tracker.jupyterlab-settings').write_text('{"windowingMode": "none"}')
    (settings.parent / 'apputils-extension').mkdir()   # and ask nothing about fetching Jupyter news
    (settings.parent / 'apputils-extension' / 'notification.jupyterlab-settings').write_text('{"fetchNews": "false"}')
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTERLAB_SETTINGS_DIR': str(work / '.settings'), 'JUPYTERLAB_WORKSPACES_DIR': str(work / '.ws'),
           'JUPYTER_RUNTIME_DIR': str(work / '.runtime'), 'MPLBACKEND': 'module://matplotlib_inline.backend_inline',
           'OMP_NUM_THREADS': '1'}
    log = open(work / 'lab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}', '--ServerApp.port_retries=0',
                             '--LabApp.news_url=None', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate',
                             '--LabApp.extension_manager=readonly'] + (['--allow-root'] if os.geteuid() == 0 else []),
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f'http://127.0.0.1:{port}'
    for _ in range(120):
        try:
            urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=2); break
        except OSError:
            if proc.poll() is not None: pytest.fail(f'jupyter lab exited: {(work / "lab.log").read_text()[-2000:]}')
            time.sleep(0.5)
    else: pytest.fail('jupyter lab did not start in 60 s')
    yield base, token, work
    proc.terminate()
    try: proc.wait(10)
    except subprocess.TimeoutExpired: proc.kill()
    log.close()


def _figure(page) -> str:
    "The explorer's current figure, as the data URL of its image."
    return page.locator('.widget-output img').first.get_attribute('src')


def _set_readout(page, index: int, value: str):
    "Type a value into a slider's readout, as a reader does."
    readout = page.locator('.widget-slider .widget-readout').nth(index)
    readout.click(); page.keyboard.press('Control+A'); page.keyboard.type(value); page.keyboard.press('Enter')


def _wait_changed(page, old: str, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        img = page.locator('.widget-output img')
        if img.count() and (new := img.first.get_attribute('src')) and new != old: return new
        page.wait_for_timeout(250)
    pytest.fail('the figure did not change after moving the slider')


def test_jupyterlab_sliders(lab, browser):
    base, token, work = lab
    page = browser.new_page()
    seen = _watch(page, base)
    page.goto(f'{base}/lab/tree/explorer.ipynb?token={token}')
    page.locator('.jp-Notebook .jp-Cell').first.wait_for(timeout=60_000)
    page.locator('#jp-main-statusbar').get_by_text(re.compile(r'\| Idle')).wait_for(timeout=90_000)   # kernel started and idle
    page.locator('#jp-MainMenu .lm-MenuBar-itemLabel').get_by_text('Run', exact=True).click()
    page.locator('.lm-Menu-itemLabel').get_by_text('Run All Cells', exact=True).click()
    # every code cell ran: no [*] or empty prompt left, and the kernel is idle again
    code = page.locator('.jp-CodeCell')
    n = code.count()
    t0 = time.time()
    while True:
        prompts = page.eval_on_selector_all('.jp-CodeCell .jp-InputPrompt', 'els => els.map(e => e.textContent.trim())')
        if all(re.fullmatch(r'\[\d+\]:', p) for p in prompts) and len(prompts) == n: break
        if time.time() - t0 > 240: pytest.fail(f'cells still running after 240 s: {prompts}')
        page.wait_for_timeout(500)
    page.locator('.widget-output img').first.wait_for(timeout=30_000)
    page.locator('.widget-slider').first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / 'lab-before.png'))
    before = _figure(page)
    # the explorer cell ran first with lambda 1, 3 iterations; the test cell below it moved the same sliders to (10, 5)
    _set_readout(page, 0, '0.1')
    after_lambda = _wait_changed(page, before)
    page.screenshot(path=str(ARTIFACTS / 'lab-lambda.png'))
    _set_readout(page, 1, '1')
    after_iters = _wait_changed(page, after_lambda)
    page.screenshot(path=str(ARTIFACTS / 'lab-iterations.png'))
    values = page.eval_on_selector_all('.widget-slider .widget-readout', 'els => els.map(e => e.textContent.trim())')
    assert [float(v) for v in values[:2]] == [0.1, 1.0], values
    assert len({before, after_lambda, after_iters}) == 3
    # no cell errored: save, then read the notebook the kernel filled
    saved = work / 'explorer.ipynb'
    before_save = saved.stat().st_mtime_ns
    page.keyboard.press('Control+S')
    for _ in range(60):   # until JupyterLab has written the file
        if saved.stat().st_mtime_ns != before_save: break
        page.wait_for_timeout(250)
    else: pytest.fail('Ctrl+S did not save the notebook')
    page.wait_for_timeout(250)
    nb = json.loads(saved.read_text())
    cells = [c for c in nb['cells'] if c['cell_type'] == 'code']
    assert all(c['execution_count'] for c in cells), [c['source'][:1] for c in cells if not c['execution_count']]
    errors = [o for c in cells for o in c['outputs'] if o['output_type'] == 'error']
    assert not errors, [f"{e['ename']}: {e['evalue']}" for e in errors]
    assert not [e for e in seen['errors'] if 'favicon' not in e], seen['errors']
    page.close()
