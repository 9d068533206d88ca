"""convert: every input layout end to end, failures, usage errors, resume after SIGKILL."""

import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from cvrl_tf import records
from cvrl_tf.cli import convert as convert_cli
from cvrl_tf.convert import convert
from cvrl_tf.convert import sources
from cvrl_tf.convert import video_io

TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tools',
                    'cvrl_convert.py')
W, H, FPS = 48, 32, 10
STEP = 8  # frame i has brightness STEP * i on its right half: index readable back


def _video(path, n=12, offset=0, tint=0, codec=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with video_io.VideoWriter(path, FPS, W, H, codec=codec) as writer:
    for i in range(n):
      f = np.full((H, W, 3), STEP * (i + offset), np.uint8)
      f[:, : W // 2] = [tint, 255 - STEP * i, 128]
      writer.write(f)
  return path


def _index(frame):
  return int(round(float(frame[:, frame.shape[1] * 3 // 4:].mean()) / STEP))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  classes = {'brush_hair': ['a', 'b', 'c'], 'cartwheel': ['d', 'e']}
  for label, names in classes.items():
    for k, name in enumerate(names):
      _video(str(root / 'classes' / label / f'{name}.avi'), tint=40 * k, codec='mpeg4')
  _video(str(root / 'kinetics' / 'abseiling' / 'yt1_000001_000002.mp4'), n=30)
  return root


def _read(output_dir, prefix):
  """{shard file: [parsed record with decoded frames]} via the pipeline's parser."""
  shards = {}
  for path in sorted(glob.glob(os.path.join(output_dir, f'{prefix}-*.tfrecord'))):
    shards[os.path.basename(path)] = [
        {k: v.numpy() for k, v in records.parse_sequence_example(r).items()}
        for r in tf.data.TFRecordDataset(path)]
  return shards


def _all(shards):
  return sorted((r for rs in shards.values() for r in rs), key=lambda r: r['media_id'])


def _jpegs(record):
  return [np.asarray(Image.open(io.BytesIO(j))) for j in record['frames']]


def test_ucf_split_round_trip(data, tmp_path):
  split = tmp_path / 'trainlist01.txt'
  split.write_text('brush_hair/a.avi 1\ncartwheel/e.avi 2\nbrush_hair/c.avi 1\n')
  listing = sources.list_class_folders(str(data / 'classes'), [str(split)], 'train')
  out = str(tmp_path / 'out')
  result = convert.convert(listing, convert.Options(
      output_dir=out, prefix='ucf', num_shards=2, short_side=0, workers=0), log=None)
  assert result.exit_code == 0
  m = result.manifest
  assert (m['num_converted'], m['num_failed'], m['num_shards']) == (3, 0, 2)
  assert [s['file'] for s in m['shards']] == ['ucf-00000-of-00002.tfrecord',
                                               'ucf-00001-of-00002.tfrecord']
  assert records.read_label_map(os.path.join(out, 'ucf_label_map.txt')) == [
      'brush_hair', 'cartwheel']
  shards = _read(out, 'ucf')
  assert [len(rs) for rs in shards.values()] == [s['num_examples'] for s in m['shards']]
  recs = _all(shards)
  assert [r['media_id'] for r in recs] == [b'brush_hair/a', b'brush_hair/c', b'cartwheel/e']
  assert [(r['label'], r['label_name']) for r in recs] == [
      (0, b'brush_hair'), (0, b'brush_hair'), (1, b'cartwheel')]
  for r in recs:
    assert (r['fps'], r['height'], r['width'], r['num_frames']) == (FPS, H, W, 12)
    source = video_io.read_frames(str(data / 'classes' / (r['media_id'].decode() + '.avi')))
    stored = _jpegs(r)
    assert len(stored) == len(source)
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(stored, source)) < 3
  assert sorted(os.listdir(out)) == [  # no *.tmp, work folder removed
      'ucf-00000-of-00002.tfrecord', 'ucf-00001-of-00002.tfrecord', 'ucf_label_map.txt',
      'ucf_manifest.json']


def test_hmdb_split_with_class_list_order(data, tmp_path):
  split = tmp_path / 'brush_hair_test_split1.txt'
  split.write_text('a.avi 1\nb.avi 2\nc.avi 0\n')
  other = tmp_path / 'cartwheel_test_split1.txt'
  other.write_text('d.avi 2\ne.avi 1\n')
  class_list = tmp_path / 'classes.txt'
  class_list.write_text('cartwheel\nbrush_hair\n')
  listing = sources.list_class_folders(str(data / 'classes'), [str(split), str(other)],
                                       'test')
  out = str(tmp_path / 'out')
  result = convert.convert(listing, convert.Options(
      output_dir=out, prefix='hmdb', num_shards=1, short_side=16, workers=0,
      class_list=str(class_list)), log=None)
  assert result.exit_code == 0
  assert records.read_label_map(os.path.join(out, 'hmdb_label_map.txt')) == [
      'cartwheel', 'brush_hair']
  recs = _all(_read(out, 'hmdb'))
  assert [(r['media_id'], r['label']) for r in recs] == [
      (b'brush_hair/b', 1), (b'cartwheel/d', 0)]
  assert (recs[0]['height'], recs[0]['width']) == (16, 24)  # short side, aspect kept
  assert _jpegs(recs[0])[0].shape == (16, 24, 3)


def test_kinetics_trim_and_fps(data, tmp_path):
  csv_path = tmp_path / 'k.csv'
  csv_path.write_text('label,youtube_id,time_start,time_end,split\n'
                      'abseiling,yt1,1,2,train\n'
                      'abseiling,yt2,1,2,train\n'      # file missing
                      'abseiling,yt3,oops,2,train\n')  # malformed row (line 4)
  listing = sources.list_kinetics(str(csv_path), str(data / 'kinetics'), trim=True)
  out = str(tmp_path / 'out')
  result = convert.convert(listing, convert.Options(
      output_dir=out, prefix='k', num_shards=1, fps=20, short_side=0, workers=0), log=None)
  assert result.exit_code == 1
  m = result.manifest
  assert m['num_converted'] == 1
  assert [f['reason'] for f in m['failures']] == ['file not found']
  assert [(e['source'], e['line']) for e in m['malformed_rows']] == [('k.csv', 4)]
  (rec,) = _all(_read(out, 'k'))
  assert rec['media_id'] == b'yt1_000001_000002' and rec['fps'] == 20
  frames = _jpegs(rec)
  assert len(frames) == 20  # one second at 20 fps
  assert [_index(f) for f in frames] == [10 + k // 2 for k in range(20)]


def test_plain_csv_with_and_without_labels(data, tmp_path):
  csv_path = tmp_path / 'list.csv'
  root = data / 'classes'
  csv_path.write_text(f'{root}/brush_hair/a.avi,zebra\n{root}/cartwheel/d.avi,\n'
                      f'{root}/cartwheel/e.avi,ant\n{root}/brush_hair/b.avi\n')
  out = str(tmp_path / 'out')
  result = convert.convert(sources.list_csv(str(csv_path)), convert.Options(
      output_dir=out, num_shards=3, short_side=0, workers=0), log=None)
  assert result.exit_code == 0
  assert records.read_label_map(os.path.join(out, 'data_label_map.txt')) == ['ant', 'zebra']
  labels = {r['media_id'].decode().split('/')[-1]: (r['label'], r['label_name'])
            for r in _all(_read(out, 'data'))}
  assert labels == {'a': (1, b'zebra'), 'd': (-1, b''), 'e': (0, b'ant'), 'b': (-1, b'')}


def test_assignment_is_a_deterministic_partition():
  a = convert.assign_shards(50, 4, seed=3)
  assert a == convert.assign_shards(50, 4, seed=3) != convert.assign_shards(50, 4, seed=4)
  assert sorted(i for shard in a for i in shard) == list(range(50))
  assert [len(s) for s in a] == [13, 13, 12, 12]


def test_shard_count_from_size_estimate(data, tmp_path):
  listing = sources.list_class_folders(str(data / 'classes'))
  out = str(tmp_path / 'out')
  result = convert.convert(listing, convert.Options(
      output_dir=out, shard_size_mb=0.01, short_side=0, workers=0), log=None)
  # ~10 KB per record: a 0.01 MB target asks for more shards than videos -> one each.
  assert result.manifest['num_shards'] == 5
  assert [s['num_examples'] for s in result.manifest['shards']] == [1] * 5


def test_rerun_same_settings_is_a_no_op_other_settings_refused(data, tmp_path):
  listing = sources.list_class_folders(str(data / 'classes'))
  out = str(tmp_path / 'out')
  opts = convert.Options(output_dir=out, num_shards=2, short_side=0, workers=0)
  first = convert.convert(listing, opts, log=None)
  stamps = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
  again = convert.convert(listing, opts, log=None)
  assert again.manifest == first.manifest
  assert stamps == {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in os.listdir(out)}
  with pytest.raises(convert.UsageError, match='fps'):
    convert.convert(listing, convert.Options(output_dir=out, num_shards=2, short_side=0,
                                             workers=0, fps=5), log=None)


def _cli(*args, **kwargs):
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(TOOL)))
  return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                        env=env, timeout=300, **kwargs)


def _main(*args):
  """cvrl_convert's absl main in this process, flags parsed as from a command line (a
  subprocess would pay the TensorFlow import again)."""
  try:
    flags.FLAGS(['cvrl_convert', *args])
    return convert_cli.main(['cvrl_convert'])
  finally:
    flags.FLAGS.unparse_flags()


def test_bad_inputs_reported_good_ones_converted(data, tmp_path, capsys):
  good = str(data / 'classes' / 'brush_hair' / 'a.avi')
  (tmp_path / 'empty.mp4').write_bytes(b'')
  (tmp_path / 'text.mp4').write_text('hello\n' * 100)
  content = open(_video(str(tmp_path / 'whole.mp4')), 'rb').read()
  (tmp_path / 'truncated.mp4').write_bytes(content[: len(content) // 2])
  csv_path = tmp_path / 'list.csv'
  csv_path.write_text(f'path,label\n{good},x\nempty.mp4,x\ntext.mp4,y\ntruncated.mp4,y\n'
                      'missing.mp4,x\nwhole.mp4,y\na,b,c\n')
  out = tmp_path / 'out'
  assert _main(f'--csv={csv_path}', f'--output_dir={out}', '--num_shards=2',
               '--workers=2', '--short_side=0') == 1
  stderr = capsys.readouterr().err
  manifest = json.loads((out / 'data_manifest.json').read_text())
  reasons = {os.path.basename(f['path']): f['reason'] for f in manifest['failures']}
  assert set(reasons) == {'empty.mp4', 'text.mp4', 'truncated.mp4', 'missing.mp4'}
  assert reasons['missing.mp4'] == 'file not found' and 'empty' in reasons['empty.mp4']
  assert manifest['malformed_rows'] == [
      {'source': 'list.csv', 'line': 8, 'reason': 'expected "path[,label]", got 3 fields'}]
  assert manifest['num_converted'] == 2
  assert sorted(r['media_id'] for r in _all(_read(str(out), 'data'))) == [
      good[:-4].encode(), b'whole']
  assert 'truncated.mp4' in stderr and 'list.csv:8' in stderr
  assert 'videos/s' in stderr and '2 of 6 videos converted' in stderr


@pytest.mark.parametrize('args', [
    ['--csv=a.csv', '--class_folders=/tmp'],             # two input flags
    ['--csv=list.csv'],                                  # no --output_dir
    ['--csv=list.csv', '--num_shards=2', '--shard_size_mb=5'],
    ['--csv=nope.csv'],                                  # listing file missing
    ['--csv=list.csv', '--jpeg_quality=0'],
])
def test_usage_errors_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys, args):
  (tmp_path / 'list.csv').write_text('a.mp4,x\n')
  monkeypatch.chdir(tmp_path)
  extra = [] if args == ['--csv=list.csv'] else [f'--output_dir={tmp_path / "out"}']
  assert _main(*args, *extra) == 2
  assert 'error' in capsys.readouterr().err
  assert os.listdir(tmp_path) == ['list.csv']


def test_usage_error_exit_status_of_the_command(tmp_path):
  run = _cli(f'--output_dir={tmp_path / "out"}')  # no input flag
  assert run.returncode == 2 and 'exactly one of' in run.stderr
  assert not os.listdir(tmp_path)


def test_resume_after_sigkill_equals_uninterrupted_run(data, tmp_path):
  """Kill -9 mid-run (a worker blocked on a FIFO standing for a slow video, after the
  first shards are complete), fix the FIFO, rerun: same records, same shards."""
  names = [f'v{i}.mp4' for i in range(8)]
  for i, name in enumerate(names):
    _video(str(tmp_path / 'videos' / name), n=10, offset=i % 3, tint=20 * i)
  csv_path = tmp_path / 'list.csv'
  csv_path.write_text(''.join(f'videos/{n},c{i % 2}\n' for i, n in enumerate(names)))
  flags = [f'--csv={csv_path}', '--num_shards=4', '--seed=1', '--short_side=0']
  assignment = convert.assign_shards(len(names), 4, seed=1)
  slow = tmp_path / 'videos' / names[assignment[2][1]]
  shutil.move(str(slow), str(tmp_path / 'saved.mp4'))
  os.mkfifo(slow)
  out = tmp_path / 'killed'
  proc = subprocess.Popen(
      [sys.executable, TOOL, *flags, f'--output_dir={out}', '--workers=1'],
      env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(TOOL))),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
  try:
    deadline = time.time() + 120
    while not (out / 'data-00001-of-00004.tfrecord').exists():
      assert proc.poll() is None and time.time() < deadline
      time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None  # blocked on the FIFO, mid-run
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: parent and its workers
    proc.wait()
  done = sorted(n for n in os.listdir(out) if n.endswith('.tfrecord'))
  assert done == ['data-00000-of-00004.tfrecord', 'data-00001-of-00004.tfrecord']
  assert not (out / 'data_manifest.json').exists()
  os.remove(slow)
  shutil.move(str(tmp_path / 'saved.mp4'), str(slow))

  # Rerun the same command (in this process), and an uninterrupted run elsewhere.
  assert _main(*flags, f'--output_dir={out}', '--workers=0') == 0
  control = convert.convert(sources.list_csv(str(csv_path)), convert.Options(
      output_dir=str(tmp_path / 'control'), num_shards=4, seed=1, short_side=0, workers=0),
                            log=None)
  assert control.exit_code == 0 and control.manifest['num_converted'] == len(names)
  assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / 'control'))
  for name in os.listdir(out):  # shards, label map and manifest
    assert (out / name).read_bytes() == (tmp_path / 'control' / name).read_bytes(), name


def test_decode_time_limit_fails_a_stalled_video_alone(data, tmp_path):
  """A FIFO that never delivers data stands for a stalled read: its decoder process is
  killed at the limit, the video recorded as failed with that reason, the others kept."""
  os.mkfifo(tmp_path / 'stalled.mp4')
  good = [str(data / 'classes' / 'brush_hair' / f'{n}.avi') for n in 'abc']
  csv_path = tmp_path / 'list.csv'
  csv_path.write_text(f'{good[0]},x\nstalled.mp4,x\n{good[1]},y\n{good[2]},y\n')
  t0 = time.monotonic()
  result = convert.convert(sources.list_csv(str(csv_path)), convert.Options(
      output_dir=str(tmp_path / 'out'), num_shards=1, short_side=0, workers=1,
      decode_timeout=2.0), log=None)
  assert time.monotonic() - t0 < 60
  assert result.exit_code == 1 and result.manifest['num_converted'] == 3
  (failure,) = result.manifest['failures']
  assert failure['path'].endswith('stalled.mp4')
  assert failure['reason'] == ('decoding took longer than the time limit of 2 s '
                               '(--decode_timeout)')
  recs = _all(_read(str(tmp_path / 'out'), 'data'))
  assert [r['media_id'] for r in recs] == sorted(g[:-4].encode() for g in good)


def _copy_to(src_dir, url):
  """The files of a local folder (recursively) into a tf.io.gfile folder."""
  for root, _, names in os.walk(src_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), src_dir)
      tf.io.gfile.makedirs(os.path.dirname(f'{url}/{rel}'))
      tf.io.gfile.copy(os.path.join(root, name), f'{url}/{rel}', overwrite=True)


def _gfile_bytes(folder):
  return {n: tf.io.gfile.GFile(f'{folder}/{n}', 'rb').read()
          for n in tf.io.gfile.listdir(folder)}


def test_ram_filesystem_inputs_and_outputs_give_the_local_bytes(data, tmp_path):
  """TensorFlow's in-memory ram:// stands for gs://: listing, videos and outputs there
  (in-process decoding: ram:// is per process), and outputs there from the pool."""
  rows = 'brush_hair/a.avi,p\ncartwheel/d.avi,q\nbrush_hair/c.avi,p\nmissing.avi,q\n'
  (tmp_path / 'videos').mkdir()
  (tmp_path / 'list.csv').write_text(rows)
  opts = dict(num_shards=2, short_side=16, seed=3)
  local = convert.convert(sources.list_csv(str(tmp_path / 'list.csv'), str(data / 'classes')),
                          convert.Options(output_dir=str(tmp_path / 'local'), workers=0,
                                          **opts), log=None)
  assert local.manifest['num_converted'] == 3
  expected = {n: (tmp_path / 'local' / n).read_bytes()
              for n in os.listdir(tmp_path / 'local')}

  _copy_to(str(data / 'classes'), 'ram://in21/videos')
  tf.io.gfile.GFile('ram://in21/list.csv', 'w').write(rows)
  remote = convert.convert(sources.list_csv('ram://in21/list.csv', 'ram://in21/videos'),
                           convert.Options(output_dir='ram://out21/a', workers=0, **opts),
                           log=None)
  assert remote.manifest['failures'][0]['path'] == 'ram://in21/videos/missing.avi'
  got = _gfile_bytes('ram://out21/a')  # no temp file, no work folder left
  assert sorted(got) == sorted(expected)
  for name in expected:
    if name.endswith('.tfrecord') or name.endswith('.txt'):
      assert got[name] == expected[name], name

  pooled = convert.convert(sources.list_csv(str(tmp_path / 'list.csv'), str(data / 'classes')),
                           convert.Options(output_dir='ram://out21/b', workers=2, **opts),
                           log=None)
  assert pooled.manifest == local.manifest
  assert _gfile_bytes('ram://out21/b') == expected
  # A rerun finds the complete run there.
  again = convert.convert(sources.list_csv(str(tmp_path / 'list.csv'), str(data / 'classes')),
                          convert.Options(output_dir='ram://out21/b', workers=2, **opts),
                          log=None)
  assert again.manifest == local.manifest


def test_runner_flag_usage_errors(tmp_path, monkeypatch, capsys):
  from cvrl_tf.convert import convert_beam  # pylint: disable=g-import-not-at-top
  (tmp_path / 'list.csv').write_text('a.mp4,x\n')
  base = [f'--csv={tmp_path / "list.csv"}', f'--output_dir={tmp_path / "out"}']
  flags.FLAGS(['cvrl_convert', *base, '--project=p'], known_only=True)
  try:
    rest = convert_cli.parse_flags(['cvrl_convert', *base, '--project=p'])[1:]
    assert rest == ['--project=p']
    assert convert_cli.main(['cvrl_convert', *rest]) == 2
    assert 'go with --runner' in capsys.readouterr().err
    monkeypatch.setattr(convert_beam, '_apache_beam', None)  # Beam not installed
    flags.FLAGS['runner'].parse('DirectRunner')
    assert convert_cli.main(['cvrl_convert']) == 2
    assert "pip install 'cvrl_tf[beam]'" in capsys.readouterr().err
  finally:
    flags.FLAGS.unparse_flags()
  assert not (tmp_path / 'out').exists()
