"""Every number in the README's results section comes from a file it names.

The section is printed by hidden cells of nbs/index.ipynb from results/ (tools/readme.py copies their output). Each
bullet names its sources in backticks: files or folders under `results/` (their JSON and JSON-lines values) and notebooks
`nbs/*.ipynb` (their printed outputs). A number in a bullet passes when a source value prints as that number at the
same number of decimals, as it is or as a percentage, in minutes, hours, thousands or millions (MB -> GB); a ratio
("13×") passes when the next two numbers quoted after it give it ("13× as fast (26.8 against 2.0 images/s)"). Sub-bullets also use their parent's sources.
"""
import json, pathlib, re

ROOT = pathlib.Path(__file__).resolve().parent.parent
NUMBER = re.compile(r'(?<![\w.\-])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(e-\d+)?(×)?(?![\w])')
SCALES = (1, 100, 1 / 60, 1 / 3600, 1 / 1000, 1 / 1e6)


def results_section(text: str) -> str:
    start = text.index('## Results so far')
    end = text.find('\n## ', start + 1)
    return text[start:end if end > 0 else None]


def bullets(section: str) -> list:
    "[(text, sources)] for every bullet and sub-bullet; a sub-bullet's sources include its parent's."
    out, parent = [], []
    for block in re.split(r'\n(?=\s*- )', section):
        if not block.lstrip().startswith('- '): continue
        srcs = re.findall(r'`((?:results|nbs)/[^`]+)`', block)
        if not block.startswith(' '): parent = srcs
        out.append((block, srcs if not block.startswith(' ') else srcs + parent))
    return out


def _walk(x):
    if isinstance(x, bool): return
    if isinstance(x, (int, float)): yield float(x)
    elif isinstance(x, str): yield from _numbers_in(x)
    elif isinstance(x, dict):
        for k, v in x.items(): yield from _numbers_in(str(k)); yield from _walk(v)
    elif isinstance(x, list):
        for v in x: yield from _walk(v)


def _numbers_in(text: str):
    for m in re.finditer(r'\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?', text):
        try: yield float(m.group().replace(',', ''))
        except ValueError: pass


def source_values(src: str) -> set:
    path = ROOT / src
    assert path.exists(), f'the README names {src}, which does not exist'
    values = set()
    if path.suffix == '.ipynb':
        for cell in json.loads(path.read_text())['cells']:
            for o in cell.get('outputs', []):
                values.update(_numbers_in(''.join(o.get('text', '')) + ''.join(''.join(o.get('data', {}).get(k, '')) for k in ('text/plain', 'text/markdown'))))
        return values
    files = [path] if path.is_file() else sorted(p for p in path.rglob('*') if p.suffix in ('.json', '.jsonl'))
    for f in files:
        if f.suffix == '.json': values.update(_walk(json.loads(f.read_text())))
        elif f.suffix == '.jsonl': values.update(v for l in f.read_text().splitlines() if l.strip() for v in _walk(json.loads(l)))
    return values


def _fmt(v: float, decimals: int, sci: bool) -> str:
    return f'{v:.{decimals}e}'.replace('e-0', 'e-') if sci else f'{v:.{decimals}f}'


def check_bullet(text: str, values: set) -> list:
    "The numbers of one bullet that no source value gives."
    plain = re.sub(r'`[^`]*`|\]\([^)]*\)', ' ', text)   # code spans (paths, names) and link targets are not numbers
    found = [(m, m.group(1).replace(',', '') + (m.group(2) or '')) for m in NUMBER.finditer(plain)]
    quoted, ratios, missing = [], [], []   # quoted: (position, the scaled source values that print as it)
    for m, token in found:
        decimals, sci = len(m.group(2) or '') - bool(m.group(2)), bool(m.group(3))
        if m.group(4): ratios.append((m.start(), token, decimals)); continue
        want = token + (m.group(3) or '')
        hits = {v * s for v in values for s in SCALES if _fmt(v * s, decimals, sci) == want}
        if hits: quoted.append((m.start(), hits))
        else: missing.append(want)
    for at, token, decimals in ratios:   # its operands are the next two numbers: "13× (26.8 against 2.0 images/s)"
        after = [hits for pos, hits in quoted if pos > at][:2]
        if len(after) < 2 or not any(f'{r:.{decimals}f}' == token for a in after[0] for b in after[1] if a and b for r in (a / b, b / a)):
            missing.append(token + '×')
    return missing


def test_every_results_number_comes_from_a_named_source():
    section = results_section((ROOT / 'README.md').read_text())
    found = bullets(section)
    assert len(found) >= 8, 'the results section has lost its bullets'
    problems = []
    for text, srcs in found:
        assert srcs, f'a results bullet names no source: {text[:120]}'
        values = set().union(*(source_values(s) for s in srcs))
        if (missing := check_bullet(text, values)): problems.append(f'{missing} in: {text[:100]}...')
    assert not problems, '\n'.join(problems)


def test_the_check_catches_a_changed_number():
    "The same check fails for a number no source gives, and for a ratio its operands do not give."
    values = {0.9016000032424927, 26.821, 2.017, 22934.1}
    assert check_bullet('capsules 90.2% after 382 min, 13× as fast (26.8 against 2.0 images/s)', values) == []
    assert check_bullet('capsules 90.3%', values) == ['90.3']
    assert check_bullet('12× as fast (26.8 against 2.0 images/s)', values) == ['12×']
    assert check_bullet('`results/x-2024.json` and ConvCaps1 in float64 on an H100', values) == []
    assert check_bullet('13× as fast, from nothing', values) == ['13×']

