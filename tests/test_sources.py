"""sources: the three input layouts, split files, malformed rows with line numbers."""

import os

import pytest

from cvrl_tf.convert import sources


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
  return str(path)


def test_kinetics_csv(tmp_path):
  csv_path = _write(tmp_path / 'k400.csv', (
      'label,youtube_id,time_start,time_end,split\n'
      'abseiling,aaa,10,20,train\n'
      'air drumming,bbb,0,10,train\n'
      'abseiling,ccc,5,3,train\n'        # line 4: end before start
      'abseiling,ddd,x,10,train\n'       # line 5: bad number
      'abseiling,eee,1,2\n'              # line 6: missing field
      ',fff,0,10,val\n'                  # unlabeled, other split
      'abseiling,ggg,1.5,2.5,train\n'))  # line 8: float times vs :06d pattern
  listing = sources.list_kinetics(csv_path, '/videos', trim=True)
  assert [i.media_id for i in listing.items] == [
      'aaa_000010_000020', 'bbb_000000_000010', 'fff_000000_000010']
  first = listing.items[0]
  assert first.path == '/videos/abseiling/aaa_000010_000020.mp4'
  assert (first.label, first.start, first.end) == ('abseiling', 10.0, 20.0)
  assert listing.items[1].path == '/videos/air drumming/bbb_000000_000010.mp4'
  assert listing.items[2].label is None
  assert [(e.source, e.line) for e in listing.errors] == [
      ('k400.csv', 4), ('k400.csv', 5), ('k400.csv', 6), ('k400.csv', 8)]
  assert 'time_end' in listing.errors[0].reason
  assert listing.settings['kind'] == 'kinetics_csv' and listing.settings['trim']

  untrimmed = sources.list_kinetics(csv_path, '/v', '{youtube_id}.mp4', split='train')
  assert [i.path for i in untrimmed.items] == ['/v/aaa.mp4', '/v/bbb.mp4', '/v/ggg.mp4']
  assert untrimmed.items[0].start is None and untrimmed.items[2].media_id == 'ggg_1.5_2.5'
  under = sources.list_kinetics(csv_path, '/v', '{label_underscored}/{youtube_id}.mp4')
  assert under.items[1].path == '/v/air_drumming/bbb.mp4'


def test_kinetics_usage_errors(tmp_path):
  with pytest.raises(sources.SourceError, match='not found'):
    sources.list_kinetics(str(tmp_path / 'none.csv'), '/v')
  bad_header = _write(tmp_path / 'h.csv', 'youtube_id,time_start\nx,1\n')
  with pytest.raises(sources.SourceError, match='label'):
    sources.list_kinetics(bad_header, '/v')
  good = _write(tmp_path / 'g.csv', 'label,youtube_id,time_start,time_end\na,b,0,1\n')
  with pytest.raises(sources.SourceError, match='filename_pattern'):
    sources.list_kinetics(good, '/v', '{video_id}.mp4')


def _class_tree(root):
  for cls, names in {'Archery': ['v_Archery_g01_c01.avi', 'v_Archery_g02_c01.avi'],
                     'BabyCrawling': ['v_BabyCrawling_g01_c01.avi'],
                     '.hidden': ['x.avi']}.items():
    for name in names:
      _write(os.path.join(root, cls, name), 'x')
  _write(os.path.join(root, 'Archery', 'notes.txt'), 'not a video')


def test_class_folders_without_split(tmp_path):
  root = str(tmp_path / 'ucf')
  _class_tree(root)
  listing = sources.list_class_folders(root)
  assert [(i.label, i.media_id) for i in listing.items] == [
      ('Archery', 'Archery/v_Archery_g01_c01'), ('Archery', 'Archery/v_Archery_g02_c01'),
      ('BabyCrawling', 'BabyCrawling/v_BabyCrawling_g01_c01')]
  assert not listing.errors
  with pytest.raises(sources.SourceError):
    sources.list_class_folders(str(tmp_path / 'missing'))


def test_ucf101_split_files(tmp_path):
  root = str(tmp_path / 'ucf')
  _class_tree(root)
  train = _write(tmp_path / 'splits' / 'trainlist01.txt',
                 'Archery/v_Archery_g02_c01.avi 1\nBabyCrawling/v_BabyCrawling_g01_c01.avi 2\n'
                 '\nbroken line here\n')
  test = _write(tmp_path / 'splits' / 'testlist01.txt', 'Archery/v_Archery_g01_c01.avi\n')
  listing = sources.list_class_folders(root, [train])
  assert [i.media_id for i in listing.items] == [
      'Archery/v_Archery_g02_c01', 'BabyCrawling/v_BabyCrawling_g01_c01']
  assert listing.items[0].path == os.path.join(root, 'Archery', 'v_Archery_g02_c01.avi')
  assert [(e.source, e.line) for e in listing.errors] == [('trainlist01.txt', 4)]
  # With --split, lists of the other split are skipped; globs expand.
  only_test = sources.list_class_folders(root, [str(tmp_path / 'splits' / '*.txt')], 'test')
  assert [i.media_id for i in only_test.items] == ['Archery/v_Archery_g01_c01']
  assert only_test.settings['split_files'] == [test, train]
  with pytest.raises(sources.SourceError, match='matches no file'):
    sources.list_class_folders(root, [str(tmp_path / 'splits' / 'x*.txt')])


def test_hmdb51_split_files(tmp_path):
  root = str(tmp_path / 'hmdb')
  os.makedirs(root)
  split_file = _write(tmp_path / 'splits' / 'brush_hair_test_split1.txt',
                      'a.avi 1 \nb.avi 2 \nc.avi 0 \nd.avi 7\ne.avi 1\n')
  other = _write(tmp_path / 'splits' / 'cartwheel_test_split1.txt', 'f.avi 2\n')
  train = sources.list_class_folders(root, [split_file, other], 'train')
  assert [(i.label, i.media_id) for i in train.items] == [
      ('brush_hair', 'brush_hair/a'), ('brush_hair', 'brush_hair/e')]
  assert [(e.source, e.line) for e in train.errors] == [('brush_hair_test_split1.txt', 4)]
  test = sources.list_class_folders(root, [split_file, other], 'test')
  assert [i.media_id for i in test.items] == ['brush_hair/b', 'cartwheel/f']
  with pytest.raises(sources.SourceError, match='--split'):
    sources.list_class_folders(root, [split_file])
  with pytest.raises(sources.SourceError, match='--split'):
    sources.list_class_folders(root, [split_file], 'val')


def test_plain_csv(tmp_path):
  csv_path = _write(tmp_path / 'data' / 'list.csv', (
      'path,label\n'
      'clips/a.mp4,dog\n'
      'clips/b.mp4,\n'
      'clips/c.mp4\n'
      '/abs/d.mp4,cat\n'
      '\n'
      'x.mp4,a,b\n'      # line 7: too many fields
      ',cat\n'))         # line 8: no path
  listing = sources.list_csv(csv_path)
  base = str(tmp_path / 'data')
  assert [(i.path, i.label, i.media_id) for i in listing.items] == [
      (os.path.join(base, 'clips/a.mp4'), 'dog', 'clips/a'),
      (os.path.join(base, 'clips/b.mp4'), None, 'clips/b'),
      (os.path.join(base, 'clips/c.mp4'), None, 'clips/c'),
      ('/abs/d.mp4', 'cat', '/abs/d')]
  assert [(e.line, e.reason.split(',')[0]) for e in listing.errors] == [
      (7, 'expected "path['), (8, 'empty path')]
  rooted = sources.list_csv(csv_path, video_root='/root')
  assert rooted.items[0].path == '/root/clips/a.mp4'
  no_header = sources.list_csv(_write(tmp_path / 'n.csv', 'a.mp4,x\n'))
  assert len(no_header.items) == 1


def test_class_list(tmp_path):
  assert sources.read_class_list(_write(tmp_path / 'c.txt', 'b\n\na\n')) == ['b', 'a']
  ucf = _write(tmp_path / 'classInd.txt', '1 ApplyEyeMakeup\n2 ApplyLipstick\n')
  assert sources.read_class_list(ucf) == ['ApplyEyeMakeup', 'ApplyLipstick']
  mixed = _write(tmp_path / 'm.txt', '1 thing\nplain\n')  # not all indexed: names as is
  assert sources.read_class_list(mixed) == ['1 thing', 'plain']
  with pytest.raises(sources.SourceError, match='duplicate'):
    sources.read_class_list(_write(tmp_path / 'd.txt', 'a\nb\na\n'))
  with pytest.raises(sources.SourceError):
    sources.read_class_list(_write(tmp_path / 'e.txt', '\n'))


def test_check_items_rejects_duplicates_and_unknown_labels():
  a = sources.Item('/v/a.mp4', 'x', 'a')
  items = [a, sources.Item('/v/a.mp4', 'x', 'a'),         # listed twice
           sources.Item('/w/a.mp4', 'x', 'a'),            # another file, same media id
           sources.Item('/v/a.mp4', 'x', 'a2', 0.0, 1.0),  # same file, other window: ok
           sources.Item('/v/b.mp4', 'zzz', 'b'),          # label not in the map
           sources.Item('/v/c.mp4', None, 'c')]           # unlabeled: ok
  kept, rejected = sources.check_items(items, {'x': 0})
  assert [i.media_id for i in kept] == ['a', 'a2', 'c']
  assert [(i.path, r.split()[0]) for i, r in rejected] == [
      ('/v/a.mp4', 'listed'), ('/w/a.mp4', 'media_id'), ('/v/b.mp4', 'label')]
