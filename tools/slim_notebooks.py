"""Keep nbs/ light (issue 19): re-encode every PNG output of the notebooks as an optimised palette PNG of at most 48
colours and drop saved widget state. Run it after executing notebooks, before `nbdev_clean`:

    python tools/slim_notebooks.py            # every notebook under nbs/
    python tools/slim_notebooks.py --check    # exit 1 if a notebook would change (tests/test_package.py runs the same check)

A figure keeps its size in pixels and is reduced to at most COLOURS colours (median cut, no dithering): line plots,
scatter plots and the rendered toynorb images are drawn from few distinct colours, and anti-aliased edges and text lose
nothing visible. (Scaling wide figures down was tried and left out: the resampled edges add colours, and the files grew.) Widget state (the `widgets` notebook metadata that
nbconvert stores) is dropped: the docs site draws the routing explorer from precomputed figures (tools/docs.py), and
JupyterLab rebuilds the widgets when the notebook runs. Idempotent: a palette PNG of at most COLOURS colours is left
as it is.
"""
import argparse, base64, io, json, pathlib, sys

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLOURS = 48   # 64 until nbs/ reached its budget; 48 saved 35 kB over all figures with no visible change
BUDGET = 1_500_000   # bytes for all of nbs/*.ipynb (issue 19)


def slim_png(b64: str) -> str | None:
    "The PNG re-encoded as a palette PNG of at most COLOURS colours, or None if it already is one."
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    if im.mode == 'P' and im.getcolors(COLOURS) is not None: return None   # getcolors: None past COLOURS colours
    im = im.convert('RGBA')
    if im.getextrema()[3][0] == 255: im = im.convert('RGB')   # opaque: no alpha channel to keep
    q = im.quantize(COLOURS, method=Image.Quantize.FASTOCTREE if im.mode == 'RGBA' else Image.Quantize.MEDIANCUT,
                    dither=Image.Dither.NONE)
    out = io.BytesIO(); q.save(out, 'PNG', optimize=True)
    return base64.b64encode(out.getvalue()).decode() + '\n'


def slim(nb: dict) -> int:
    "Slim one notebook in place; the number of changes."
    n = 0
    if nb.get('metadata', {}).pop('widgets', None) is not None: n += 1
    for cell in nb['cells']:
        for out in cell.get('outputs', []):
            data = out.get('data', {})
            if 'image/png' not in data: continue
            new = slim_png(''.join(data['image/png']) if isinstance(data['image/png'], list) else data['image/png'])
            if new is not None: data['image/png'] = new; n += 1
    return n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('notebooks', nargs='*', help='default: nbs/*.ipynb')
    p.add_argument('--check', action='store_true', help='change nothing; exit 1 if a notebook would change')
    args = p.parse_args(argv)
    paths = [pathlib.Path(x) for x in args.notebooks] or sorted((ROOT / 'nbs').glob('*.ipynb'))
    stale = []
    for path in paths:
        nb = json.loads(path.read_text())
        n = slim(nb)
        if not n: continue
        stale.append(f'{path.name} ({n} outputs)')
        if not args.check:
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    total = sum(p.stat().st_size for p in sorted((ROOT / 'nbs').glob('*.ipynb')))
    print(f"{'would slim' if args.check else 'slimmed'} {len(stale)} notebooks{': ' + ', '.join(stale) if stale else ''}; "
          f"nbs/*.ipynb {total / 1e6:.2f} MB (budget {BUDGET / 1e6:.1f} MB)")
    return 1 if args.check and stale else 0


if __name__ == '__main__': sys.exit(main())
