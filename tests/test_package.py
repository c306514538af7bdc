"""Process- and file-level checks: the public API, packaging, and notebooks in step with the library."""
import configparser, json, os, pathlib, shutil, subprocess, sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NBS = sorted((ROOT / 'nbs').glob('[0-9]*.ipynb'))
API = ['CapsNet', 'PrimaryCaps', 'ConvCaps', 'ClassCaps', 'em_routing', 'em_routing_steps', 'm_step', 'e_step',
       'inverse_temperature_schedule', 'coord_addition', 'spread_loss', 'spread_loss_margin', 'kernel_tile',
       'mat_transform', 'fit_gmm', 'routing_explorer', 'explore_routing', 'em_routing_fast', 'get_dataset', 'SmallNORB', 'DatasetNotFoundError',
       'train', 'TrainConfig', 'evaluate', 'load_model', 'build_model', 'save_checkpoint', 'load_checkpoint', 'CheckpointError', 'DivergenceError', 'non_finite', 'CNNBaseline',
       'fgsm', 'bim', 'adversarial_accuracy', 'class_routing_trace', 'PoseDecoder', 'fit_pose_decoder', 'perturb_pose',
       'CHUNK_MB', 'source_commit', 'vote_and_route', 'cpu_kernel', 'BACKENDS', 'coord_offsets',
       'paper_schedule', 'COSTS', 'e_step_logits', 'spatial_em_routing', 'spatial_children', 'child_softmax', 'VARIANTS',
       'calibrate_activations', 'cost_scale_rule', 'kernel_source', 'KERNEL_FILES']


def _run(code, cwd, env=None):
    return subprocess.run([sys.executable, '-c', code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_public_api_from_package_root():
    import emcaps_nb
    missing = [name for name in API if not hasattr(emcaps_nb, name)]
    assert not missing, missing
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    assert emcaps_nb.__version__ == cfg['DEFAULT']['version']


def test_import_has_no_plotting_or_widget_side_effects(tmp_path):
    r = _run("import sys, emcaps_nb; bad = [m for m in ('matplotlib', 'ipywidgets', 'IPython', 'mlxtend', 'torchvision') if m in sys.modules]; "
             "print(bad); sys.exit(1 if bad else 0)", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_non_editable_install_imports_outside_the_repo(tmp_path):
    "`pip install <repo>` builds a package that imports from anywhere (dependencies come from this environment)."
    target = tmp_path / 'site'
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '-q',
                        '--target', str(target), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, 'PYTHONPATH': str(target)}
    r = _run("import emcaps_nb, pathlib; from emcaps_nb import CapsNet, em_routing, m_step, e_step, coord_addition, spread_loss; "
             "print(pathlib.Path(emcaps_nb.__file__).resolve())", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert pathlib.Path(r.stdout.strip()).is_relative_to(target.resolve())
    (eps,) = target.glob('emcaps_nb-*.dist-info/entry_points.txt')   # the subcommands of later notebooks travel with the package
    assert '[emcaps_nb.commands]' in eps.read_text() and 'viewpoints = emcaps_nb.viewpoints:main' in eps.read_text()


def test_library_is_what_the_notebooks_export(tmp_path):
    "Running nbdev_export on a copy of the repository changes no module: nobody edited emcaps_nb/*.py by hand."
    for name in ('nbs', 'emcaps_nb'): shutil.copytree(ROOT / name, tmp_path / name)
    for name in ('settings.ini', 'setup.py', 'README.md'): shutil.copy(ROOT / name, tmp_path / name)
    exe = pathlib.Path(sys.executable).parent / 'nbdev_export'
    if not exe.exists(): exe = shutil.which('nbdev_export') or pytest.fail('nbdev_export is not installed (dev extras)')
    r = subprocess.run([str(exe)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    changed = [p.name for p in sorted((ROOT / 'emcaps_nb').glob('*.py'))
               if p.read_text() != (tmp_path / 'emcaps_nb' / p.name).read_text()]
    assert not changed, f'modules differ from what the notebooks export: {changed}'


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_notebook_structure(nb):
    "One `#| default_exp` per notebook, a title, and committed outputs."
    cells = json.loads(nb.read_text())['cells']
    code = [''.join(c['source']) for c in cells if c['cell_type'] == 'code']
    assert sum(s.lstrip().startswith('#| default_exp') for s in code) == 1
    assert any(''.join(c['source']).startswith('# ') for c in cells if c['cell_type'] == 'markdown')
    assert any(c.get('outputs') for c in cells if c['cell_type'] == 'code'), 'committed without outputs'


def test_each_module_comes_from_one_notebook():
    targets = [next(s.split()[2] for s in (''.join(c['source']).strip() for c in json.loads(nb.read_text())['cells'])
                    if s.startswith('#| default_exp')) for nb in NBS]
    assert len(targets) == len(set(targets)), targets


def test_bench_command_prints_json_lines():
    "python -m emcaps_nb.bench prints one JSON object per (case, implementation), all measured in the run."
    r = subprocess.run([sys.executable, '-m', 'emcaps_nb.bench', '--case', 'classcaps', '--batch', '2', '--repeats', '1'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(row['case'], row['impl']) for row in rows] == [('classcaps', 'literal'), ('classcaps', 'chunked'), ('classcaps', 'cpp')]
    for row in rows:
        assert set(row) == {'case', 'impl', 'device', 'dtype', 'batch', 'images_per_s', 'peak_mb'}
        assert row['batch'] == 2 and row['images_per_s'] > 0 and row['peak_mb'] > 0


def test_emcaps_bench_is_the_benchmark():
    "`emcaps bench` takes the benchmark's own options and prints its JSON lines."
    r = subprocess.run([sys.executable, '-m', 'emcaps_nb.cli', 'bench', '--case', 'classcaps', '--impl', 'cpp', '--batch', '2', '--repeats', '1'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (row,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert (row['case'], row['impl'], row['batch']) == ('classcaps', 'cpp', 2) and row['images_per_s'] > 0


def test_emcaps_subcommands_of_later_notebooks():
    "`emcaps results|viewpoints|toynorb|ablation|bench`: each is its module's main, under its `emcaps` name."
    for cmd in ('results', 'viewpoints', 'toynorb', 'ablation', 'bench'):
        r = subprocess.run([sys.executable, '-m', 'emcaps_nb.cli', cmd, '--help'], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f'usage: emcaps {cmd} '), r.stdout[:200]
    r = subprocess.run([sys.executable, '-m', 'emcaps_nb.cli', 'viewpoints'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and 'emcaps viewpoints: error: the following arguments are required: runs' in r.stderr, r.stderr


def test_notebooks_are_slim():
    "nbs/ stays under 1.5 MB (issue 19): figures stored as palette PNGs by tools/slim_notebooks.py, no saved widget state."
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'slim_notebooks.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, f'run python tools/slim_notebooks.py: {r.stdout}{r.stderr}'
    total = sum(p.stat().st_size for p in (ROOT / 'nbs').glob('*.ipynb'))
    assert total < 1_500_000, f'nbs/*.ipynb holds {total / 1e6:.2f} MB, over the 1.5 MB budget'


def test_readme_is_generated_from_the_index_notebook():
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_ci_runs_the_readme_test_command():
    readme, ci = (ROOT / 'README.md').read_text(), (ROOT / '.ci' / 'run').read_text()
    assert '# run the tests\nOMP_NUM_THREADS=1 nbdev_test && pytest -q tests\n' in readme
    assert "awk '/^# run the tests$/" in ci


def test_docs_processing_runs_no_experiment():
    "nbdev's docs processing executes exported cells and every cell that imports something: those cells hold imports only."
    import ast, warnings
    from nbdev.process import NBProcessor
    from nbdev.processors import _do_eval
    bad = []
    for path in NBS + [ROOT / 'nbs' / 'index.ipynb']:
        for cell in NBProcessor(path, procs=[]).nb.cells:
            if cell.cell_type != 'code': continue
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')   # nbdev warns about exactly the cells this test reports
                if not _do_eval(cell): continue
            if cell.directives_.keys() & {'export', 'exports', 'exporti', 'exec_doc'}: continue   # library code
            if any(not isinstance(t, (ast.Import, ast.ImportFrom)) for t in cell.parsed_()):
                bad.append(f'{path.name} cell {cell.idx_}: {cell.source.splitlines()[0]}')
    assert not bad, 'cells mixing imports with other code (a docs build would run them; move the imports to their own cell):\n' + '\n'.join(bad)


def test_every_file_is_written_through_atomic_path():
    "The package writes files only to the temporary path of files.atomic_path (or an open file of it): no bare writes."
    import ast
    bad = []
    for py in sorted((ROOT / 'emcaps_nb').glob('*.py')):
        if py.name in ('files.py', '_modidx.py'): continue
        for node in ast.walk(ast.parse(py.read_text())):
            if not isinstance(node, ast.Call): continue
            f, args = node.func, node.args
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', '')
            owner = getattr(f.value, 'id', '') if isinstance(f, ast.Attribute) else ''
            target = None
            if name in ('write_text', 'write_bytes') and isinstance(f, ast.Attribute): target = owner
            elif name == 'save' and owner == 'torch': target = getattr(args[1], 'id', '?') if len(args) > 1 else '?'
            elif name == 'replace' and owner == 'os': target = '?'
            elif name == 'open' and owner in ('', 'gzip') and len(args) > 1 and isinstance(args[1], ast.Constant) and 'w' in str(args[1].value):
                if isinstance(args[0], ast.Constant) and str(args[0].value).startswith('/proc/'): continue
                target = getattr(args[0], 'id', '?')
            if target is not None and target not in ('tmp', 'f'): bad.append(f'{py.name}:{node.lineno} {ast.unparse(node)[:80]}')
    assert not bad, 'files written without files.atomic_path:\n' + '\n'.join(bad)


# Breaches of the layering that remain, each to be removed (issue 19): the test fails on any other, and on one of these
# once it is fixed, so that the list only shrinks.
KNOWN_LAYERING_BREACHES = {}


def test_layering():
    "Each module imports only modules of earlier notebooks (function-level imports included), none imports the CLI, no _private name crosses modules."
    import ast
    order = {}
    for nb in NBS:
        cells = json.loads(nb.read_text())['cells']
        order[next(''.join(c['source']).split()[2] for c in cells if ''.join(c['source']).startswith('#| default_exp'))] = nb.stem
    found, private = set(), []
    for py in sorted((ROOT / 'emcaps_nb').glob('*.py')):
        mod = py.stem
        if mod not in order: continue
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('emcaps_nb')):
                target = (node.module or '').removeprefix('emcaps_nb').lstrip('.')
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import) and any(a.name.startswith('emcaps_nb.') for a in node.names):
                target, names = next(a.name for a in node.names if a.name.startswith('emcaps_nb.')).split('.', 1)[1], []
            else: continue
            if not target or target == mod: continue
            if order.get(target, '~') >= order[mod] or target == 'cli': found.add(f'{mod} -> {target}')
            private += [f'{mod} imports {target}.{n}' for n in names if n.startswith('_')]
    assert not private, private
    assert found == set(KNOWN_LAYERING_BREACHES), (f'new breaches: {sorted(found - set(KNOWN_LAYERING_BREACHES))}; '
                                                   f'fixed (remove them from the list): {sorted(set(KNOWN_LAYERING_BREACHES) - found)}')


def test_no_public_name_is_also_a_module_name():
    "A function named like a module (data.toynorb beside the toynorb module, once) makes `emcaps_nb.X` mean two things."
    import importlib, pkgutil, emcaps_nb
    modules = {m.name for m in pkgutil.iter_modules(emcaps_nb.__path__) if not m.name.startswith('_')}
    clashes = [f'{mod}.{name}' for mod in sorted(modules) for name in getattr(importlib.import_module(f'emcaps_nb.{mod}'), '__all__', [])
               if name in modules]
    assert not clashes, f'public names that are also module names: {clashes}'
