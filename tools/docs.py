"""Build the documentation site from the notebooks into `_docs/`.

    python tools/docs.py --fetch     # the first time: download KaTeX, the ipywidgets embedder and the font (npm), then build
    python tools/docs.py             # the offline site: nbdev's notebook processing, then smalldocs (no Quarto, no network)
    python tools/docs.py --serve     # build, then serve _docs/ on http://127.0.0.1:8000 only
    python tools/docs.py --quarto    # the canonical site with Quarto (what .github/workflows/deploy.yaml runs)

Both builds stage the notebooks the same way into `_proc/`: nbdev's processing (`show_doc` API docs, hidden and exported
cells, links between pages; it executes import, export and `show_doc` cells only), a sidebar of the notebooks in order, and the
files that markdown cells link outside `nbs/` (`../results/figures/*.png`) copied into the site. The offline build then renders
`_proc/` with smalldocs and completes what smalldocs leaves out: pages named by nbdev's `output-file`, KaTeX and the theme's
font from local files instead of CDNs, links to the published site made relative, and ipywidgets drawn from the notebook's saved widget state.
"""
import argparse, json, os, pathlib, re, shutil, subprocess, sys, tarfile, tempfile, time

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENDOR = ROOT / 'tools' / 'vendor'
# npm packages the offline site serves from site_libs/ (pinned: KaTeX is the version smalldocs links; html-manager 1.x is
# ipywidgets 8's; Source Sans Pro is the font the cosmo theme imports from Google Fonts)
NPM = {'katex': 'katex@0.16.11', 'html-manager': '@jupyter-widgets/html-manager@1.0.15',
       'source-sans-pro': '@fontsource/source-sans-pro@5.3.0'}
THEME_FONTS = ('source-sans-pro', (300, 400, 700))
WIDGET_VIEW, WIDGET_STATE = 'application/vnd.jupyter.widget-view+json', 'application/vnd.jupyter.widget-state+json'
IMAGES = ('.png', '.jpg', '.jpeg', '.gif', '.svg', '.webp')


def fetch(vendor=VENDOR):
    "Download the pinned npm packages with `npm pack` and unpack them under `vendor/` (the only step that uses the network)."
    if not shutil.which('npm'): sys.exit('npm is needed to fetch KaTeX and the widget embedder: apt-get install npm (or any Node.js)')
    vendor.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in NPM.items():
            tgz = subprocess.run(['npm', 'pack', '--silent', spec], cwd=tmp, check=True, capture_output=True, text=True).stdout.split()[-1]
            shutil.rmtree(vendor / name, ignore_errors=True)
            with tarfile.open(pathlib.Path(tmp) / tgz) as tf: tf.extractall(tmp, filter='data')
            shutil.move(pathlib.Path(tmp) / 'package', vendor / name)
            print(f'fetched {spec} into {(vendor / name).relative_to(ROOT)}')


def _vendor_files(vendor=VENDOR) -> dict:
    "The asset folders the offline site copies into site_libs/, checked before the build starts."
    need = {'katex': vendor / 'katex' / 'dist', 'widgets': vendor / 'html-manager' / 'dist', 'font': vendor / THEME_FONTS[0]}
    missing = [str(p) for p in need.values() if not p.is_dir()]
    if missing: sys.exit(f"missing {', '.join(missing)}: run `python tools/docs.py --fetch` once (npm registry)")
    return need


def _config():
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    return cfg, pathlib.Path(cfg.nbs_path), ROOT / '_proc'


def _notebook_sidebar(nbs: pathlib.Path):
    "sidebar.yml listing the notebooks only, in file-name order (nbdev_sidebar with its default glob also lists other files)."
    from nbdev.quarto import nbdev_sidebar
    nbdev_sidebar.__wrapped__(path=nbs, file_glob='*.ipynb', force=True)


def _link_outside(proc: pathlib.Path, cfg):
    "Markdown links to `../path` (outside nbs/): images are copied into the site, other files point at the repository."
    blob = f"{cfg.git_url}/blob/{cfg.branch}/"
    for nb_path in proc.glob('*.ipynb'):
        nb = json.loads(nb_path.read_text())
        changed = False
        for cell in nb['cells']:
            if cell['cell_type'] != 'markdown': continue
            src = ''.join(cell['source'])
            def fix(m):
                target = m.group(1)
                f = (ROOT / target).resolve()
                if f.suffix.lower() in IMAGES and f.is_file():
                    (proc / target).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, proc / target)
                    return f'](' + target
                return '](' + blob + target
            new = re.sub(r'\]\(\.\./([^)\s]+)', fix, src)
            if new != src: cell['source'], changed = new, True
        if changed: nb_path.write_text(json.dumps(nb, indent=1))


def _asis_outputs(nbs: pathlib.Path, proc: pathlib.Path) -> int:
    "Cells flagged `#| output: asis` print markdown (the index's results, read from results/): make their output a markdown cell."
    count = 0
    for src_path in nbs.glob('*.ipynb'):
        asis = {c.get('id') for c in json.loads(src_path.read_text())['cells']
                if c['cell_type'] == 'code' and re.search(r'^#\|\s*output:\s*asis\s*$', ''.join(c['source']), re.M)}
        if not asis or not (proc / src_path.name).exists(): continue
        nb = json.loads((proc / src_path.name).read_text())
        for k, cell in enumerate(nb['cells']):
            if cell.get('id') in asis:
                text = ''.join(''.join(o.get('text', '')) for o in cell.get('outputs', []) if o.get('output_type') == 'stream')
                nb['cells'][k] = {'cell_type': 'markdown', 'id': cell['id'], 'metadata': {}, 'source': text}
                count += 1
        (proc / src_path.name).write_text(json.dumps(nb, indent=1))
    return count


def stage(n_workers: int = 2):
    "nbdev's processing of every notebook into _proc/, as `nbdev_docs` does before Quarto renders."
    # Called from Python rather than as `nbdev_proc_nbs`, which (nbdev 2.4.14) first tries to install Quarto when it is missing.
    from nbdev.serve import proc_nbs
    from nbdev.quarto import refresh_quarto_yml
    cfg, nbs, proc = _config()
    shutil.rmtree(proc, ignore_errors=True)
    refresh_quarto_yml()   # nbdev.yml from settings.ini, as nbdev_docs does
    _notebook_sidebar(nbs)
    proc_nbs(nbs, n_workers=n_workers, force=True)
    _asis_outputs(nbs, proc)
    _link_outside(proc, cfg)
    return cfg, proc


def _front_matter(nb: dict) -> tuple[dict, int | None]:
    "The YAML front matter nbdev's processing puts in a notebook's first (raw) cell, and that cell's index."
    import yaml
    first = nb['cells'][0] if nb['cells'] else {}
    src = ''.join(first.get('source', ''))
    if first.get('cell_type') == 'raw' and src.startswith('---'): return yaml.safe_load(src.strip().strip('-')) or {}, 0
    return {}, None


def _output_files(proc: pathlib.Path) -> dict:
    "Rename each notebook to its `output-file` (smalldocs names a page after its notebook); returns {old page: new page}."
    import yaml
    pages = {}
    for nb_path in sorted(proc.glob('*.ipynb')):
        nb = json.loads(nb_path.read_text())
        fm, i = _front_matter(nb)
        out = fm.pop('output-file', None)
        if not out: continue
        nb['cells'][i]['source'] = '---\n' + yaml.safe_dump(fm, allow_unicode=True, sort_keys=False) + '---'
        new = proc / (pathlib.Path(out).stem + '.ipynb')
        nb_path.unlink(); new.write_text(json.dumps(nb, indent=1))
        pages[nb_path.name] = new.name
    side = proc / 'sidebar.yml'
    text = side.read_text()
    for old, new in pages.items(): text = re.sub(rf'(?m)(\s){re.escape(old)}$', rf'\g<1>{new}', text)
    side.write_text(text)
    return pages


_EXPLORER_JS = """(() => {
  const root = document.currentScript.previousElementSibling, grid = JSON.parse(root.dataset.grid), lambdas = grid.lambdas;
  const get = name => root.querySelector(`[name=${name}]`), img = root.querySelector('img'), caption = root.querySelector('figcaption');
  function show() {
    const lam = lambdas[+get('lambda').value], it = +get('iterations').value, cost = get('cost').value;
    root.querySelector('output[for=lambda]').textContent = lam;
    root.querySelector('output[for=iterations]').textContent = it;
    const file = grid.files[`${lam}|${it}|${cost}`];
    img.src = 'explorer/' + file; img.alt = caption.textContent = `λ = ${lam}, ${it} iteration(s), the ${cost}'s cost`;
    root.dataset.shown = file;
  }
  root.querySelectorAll('input, select').forEach(e => { e.addEventListener('input', show); e.addEventListener('change', show); });
  show();
})();"""


def _render_part(args):
    from emcaps_nb.explorer import render_grid
    out, cost = args
    return render_grid(out, costs=(cost,))


def _explorer_grid(out: pathlib.Path) -> list:
    """`render_grid`'s figures in `out`, one process per cost, cached in ~/.cache/emcaps_nb under a hash of the code that
    draws them (the test suite's build then reuses the first build's)."""
    import concurrent.futures, hashlib, importlib.metadata, emcaps_nb
    pkg = pathlib.Path(emcaps_nb.__file__).parent
    key = hashlib.sha256(b''.join((pkg / f).read_bytes() for f in ('explorer.py', 'routing.py', 'mstep.py'))
                         + importlib.metadata.version('matplotlib').encode()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get('XDG_CACHE_HOME', pathlib.Path.home() / '.cache')) / 'emcaps_nb' / f'explorer-{key}'
    if not (cache / 'manifest.json').exists():
        tmp = cache.with_name(cache.name + f'.tmp{os.getpid()}')
        shutil.rmtree(tmp, ignore_errors=True)
        with concurrent.futures.ProcessPoolExecutor(2) as pool:
            records = [r for part in pool.map(_render_part, [(tmp, 'article'), (tmp, 'paper')]) for r in part]
        (tmp / 'manifest.json').write_text(json.dumps(records, indent=1))
        try: os.replace(tmp, cache)
        except OSError: shutil.rmtree(tmp, ignore_errors=True)   # another build got there first
    shutil.copytree(cache, out, dirs_exist_ok=True)
    return json.loads((out / 'manifest.json').read_text())


def _static_explorer(proc: pathlib.Path) -> int:
    "The routing explorer's widget becomes controls that show a figure precomputed for every slider value (no kernel)."
    import html
    from emcaps_nb.explorer import STATIC_LAMBDAS
    nb_path = proc / 'routing_explorer.ipynb'
    nb = json.loads(nb_path.read_text())
    outs = [o for c in nb['cells'] for o in c.get('outputs', []) if WIDGET_VIEW in o.get('data', {})]
    if len(outs) != 1: sys.exit(f'routing_explorer.ipynb has {len(outs)} widget views; the static explorer replaces exactly one')
    records = _explorer_grid(proc / 'explorer')
    its = sorted({r['iterations'] for r in records})
    grid = {'lambdas': [f'{x:g}' for x in STATIC_LAMBDAS], 'files': {f"{r['lambda']:g}|{r['iterations']}|{r['cost']}": r['file'] for r in records}}
    start = STATIC_LAMBDAS.index(1.0)
    outs[0]['data'] = {'text/html': (
        f'<figure class="static-explorer" data-grid="{html.escape(json.dumps(grid))}">\n'
        f'<div class="static-explorer-controls">'
        f'<label>λ <input type="range" name="lambda" min="0" max="{len(STATIC_LAMBDAS) - 1}" step="1" value="{start}"> <output for="lambda"></output></label> '
        f'<label>iterations <input type="range" name="iterations" min="{its[0]}" max="{its[-1]}" step="1" value="3"> <output for="iterations"></output></label> '
        f'<label>cost <select name="cost">' + ''.join(f'<option value="{c}">{c}</option>' for c in dict.fromkeys(r['cost'] for r in records)) + '</select></label></div>\n'
        f'<img class="static-explorer-figure" alt=""><figcaption></figcaption>\n'
        f'<p class="static-explorer-note">No kernel here: these {len(records)} figures were drawn by <code>render_grid</code> when the site was '
        f'built (λ from {STATIC_LAMBDAS[0]:g} to {STATIC_LAMBDAS[-1]:g} in half-decade steps). In JupyterLab the sliders run the routing live.</p>\n'
        f'</figure><script>{_EXPLORER_JS}</script>')}
    nb_path.write_text(json.dumps(nb, indent=1))
    return len(records)


def _static_widgets(proc: pathlib.Path) -> int:
    "Widget outputs become the tags that the html-manager embedder renders from the notebook's saved widget state."
    n = 0
    for nb_path in proc.glob('*.ipynb'):
        nb = json.loads(nb_path.read_text())
        state = nb.get('metadata', {}).get('widgets', {}).get(WIDGET_STATE)
        first = True
        for cell in nb['cells']:
            for out in cell.get('outputs', []):
                view = out.get('data', {}).get(WIDGET_VIEW)
                if not view: continue
                if not state or view['model_id'] not in state['state']: continue   # no saved state: the text fallback stays
                tags = ''
                if first:   # the state and the embedder once per page, before the first view
                    tags = (f'<script type="{WIDGET_STATE}">{json.dumps(state)}</script>\n'
                            '<script src="site_libs/widgets/embed.js"></script>\n')
                    first = False
                out['data'] = {'text/html': tags + f'<script type="{WIDGET_VIEW}">{json.dumps(view)}</script>'}
                n += 1
        if not first: nb_path.write_text(json.dumps(nb, indent=1))   # a view was rewritten
    return n


def _local_fonts(site: pathlib.Path, font: pathlib.Path):
    "The theme's Google Fonts import becomes local @font-face files; any other remote import is an error, not a silent request."
    name, weights = THEME_FONTS
    dest = site / 'site_libs' / 'fonts' / name
    (dest / 'files').mkdir(parents=True)
    for w in weights:
        shutil.copy2(font / f'{w}.css', dest)
        for f in (font / 'files').glob(f'*-{w}-normal.woff*'): shutil.copy2(f, dest / 'files')
    local = ''.join(f'@import url(../fonts/{name}/{w}.css);' for w in weights)
    for css in (site / 'site_libs' / 'themes').glob('*.css'):
        text = re.sub(r'@import url\(https://fonts\.googleapis\.com/css2\?family=Source\+Sans\+Pro[^)]*\);', local, css.read_text())
        if (remote := re.search(r'@import url\((https?:[^)]*)\)', text)):
            sys.exit(f'{css.name} imports {remote.group(1)}: vendor that font in tools/docs.py (THEME_FONTS) or choose another theme')
        css.write_text(text)


def _postprocess(site: pathlib.Path, cfg, assets: dict):
    "Local KaTeX, widget embedder and theme font instead of CDNs; relative links instead of the published site's URLs."
    shutil.copytree(assets['katex'], site / 'site_libs' / 'katex', ignore=shutil.ignore_patterns('*.map', '*.mjs'))
    shutil.copytree(assets['widgets'], site / 'site_libs' / 'widgets', ignore=shutil.ignore_patterns('*.map', '*amd*', '*.LICENSE.txt'))
    _local_fonts(site, assets['font'])
    published = f"{cfg.doc_host}{cfg.doc_baseurl}".rstrip('/') + '/'
    for page in site.rglob('*.html'):
        text = page.read_text()
        text = re.sub(r'https://cdn\.jsdelivr\.net/npm/katex@[^/]+/dist/', 'site_libs/katex/', text)
        text = text.replace(published, '')
        page.write_text(text)


def build_offline(out: pathlib.Path | None = None, n_workers: int = 2) -> pathlib.Path:
    "The whole offline build; returns the site folder."
    from smalldocs.site import build
    assets = _vendor_files()
    t0 = time.time()
    cfg, proc = stage(n_workers)
    t1 = time.time()
    _output_files(proc)
    figures = _static_explorer(proc)
    widgets = _static_widgets(proc)
    site = build(proc, quiet=True)
    for w in site.warnings: print('smalldocs warning:', w, file=sys.stderr)
    out = pathlib.Path(out or ROOT / cfg.doc_path)
    built = proc / '_docs'
    shutil.rmtree(out, ignore_errors=True)
    shutil.move(built, out)
    if (proc / 'explorer').is_dir(): shutil.copytree(proc / 'explorer', out / 'explorer')   # shown by the page's script only
    _postprocess(out, cfg, assets)
    pages = len(list(out.glob('*.html')))
    print(f'built {pages} pages into {out} ({figures} explorer figures, {widgets} widget views) in {time.time() - t0:.1f} s '
          f'(nbdev processing {t1 - t0:.1f} s)')
    return out


def build_quarto(n_workers: int = 2) -> pathlib.Path:
    "The canonical site: the same staging, then `quarto render` as nbdev_docs does, moved to _docs/."
    if not shutil.which('quarto'): sys.exit('quarto is not installed (https://quarto.org); the offline build needs no Quarto')
    cfg, proc = stage(n_workers)
    subprocess.run(['quarto', 'render'], cwd=proc, check=True)
    out = ROOT / cfg.doc_path
    shutil.rmtree(out, ignore_errors=True)
    shutil.move(proc / cfg.doc_path.name, out)
    return out


def serve(site: pathlib.Path, port: int = 8000):
    import functools, http.server
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    with http.server.ThreadingHTTPServer(('127.0.0.1', port), handler) as httpd:
        print(f'serving {site} on http://127.0.0.1:{port}/ (Ctrl-C stops)')
        httpd.serve_forever()


def main(argv=None):
    p = argparse.ArgumentParser(prog='python tools/docs.py', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--fetch', action='store_true', help='first download KaTeX, the widget embedder and the theme font (npm registry) into tools/vendor/')
    p.add_argument('--quarto', action='store_true', help='build the canonical site with Quarto instead')
    p.add_argument('--serve', action='store_true', help='serve the built site on 127.0.0.1')
    p.add_argument('--port', type=int, default=8000, help='port for --serve (default 8000)')
    p.add_argument('--out', type=pathlib.Path, help='site folder (default _docs)')
    p.add_argument('--workers', type=int, default=2, help='processes for nbdev processing (default 2)')
    a = p.parse_args(argv)
    if a.fetch: fetch()
    site = build_quarto(a.workers) if a.quarto else build_offline(a.out, a.workers)
    if a.serve: serve(site, a.port)


if __name__ == '__main__':
    main()
