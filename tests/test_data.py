"""Datasets: recipes checked numerically, loaders on small files in the official formats, bad input."""

import pickle
import zipfile

import cv2
import h5py
import numpy as np
import pytest
import torch

from chyvae_ext.data import DataError, get_dataset
from chyvae_ext.data import correlated_ellipses as ce
from chyvae_ext.data import dsprites as dsp
from chyvae_ext.data.__main__ import main as data_cli
from chyvae_ext.data.shapes2d import Shapes2D


def centroid_and_area(img):
    ys, xs = np.nonzero(img[0] > 0.5)
    return xs.mean(), ys.mean(), len(xs)


# ---- CorrelatedEllipses ------------------------------------------------------------------------

def test_render_follows_the_published_recipe_literally():
    values = np.array([[0.5, 0.5, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0], [0.2, 0.9, 0.4, 0.3]])
    expected = []
    for x, y, s, r in values:  # docs/math.md 3, step by step
        grid = np.linspace(0, 1, 32)
        bx, by = grid[np.digitize(x, grid) - 1], grid[np.digitize(y, grid) - 1]
        sgrid = np.linspace(0.5, 1, 6)
        bs = sgrid[np.digitize(s / 2 + 0.5, sgrid) - 1]
        rgrid = np.linspace(0, 360, 40)
        br = rgrid[np.digitize(r * 360, rgrid) - 1]
        canvas = np.zeros((256, 256), np.uint8)
        cv2.ellipse(canvas, (round(bx * 156 + 50), round(by * 156 + 50)), (round(bs * 50), round(bs * 25)),
                    br, 0, 360, 255, -1)
        expected.append(cv2.resize(canvas, (64, 64), interpolation=cv2.INTER_AREA))
    assert np.array_equal(ce.render(values), np.stack(expected))


def test_patch_renderer_equals_the_literal_recipe_bit_for_bit():
    """The fast renderer (pre-resized patches pasted at centre // 4) against one canvas per image,
    for every scale and angle, every centre residue mod 4 and the canvas edges."""
    rng = np.random.default_rng(3)
    rows = []
    for cs in range(6):
        for ca in range(40):
            xs = np.concatenate([[0, 31], rng.integers(0, 32, 6)])
            ys = np.concatenate([[31, 0], rng.integers(0, 32, 6)])
            rows += [[x, y, cs, ca] for x, y in zip(xs, ys, strict=True)]
    classes = np.array(rows, dtype=np.int64)
    residues = {(int(round(g * 156 + 50)) % 4) for g in np.linspace(0, 1, 32)[classes[:, 0]]}
    assert residues == {0, 1, 2, 3}
    assert np.array_equal(ce._draw(classes), ce._draw_literal(classes))


def test_classes_match_the_grids():
    classes = ce.values_to_classes(np.array([[0.0, 1.0, 0.0, 1.0], [0.5, 0.49, 1.0, 0.0]]))
    assert classes.tolist() == [[0, 31, 0, 39], [15, 15, 5, 0]]


def test_sampled_correlation_matches_the_clipped_recipe():
    n = 200_000
    v = ce.sample_values(n, np.random.default_rng(1))
    # The recipe's correlation after clipping, from an independent large draw.
    f = np.clip(np.random.default_rng(99).multivariate_normal([0, 0], [[1, 0.5], [0.5, 1]], 2_000_000), -1, 1)
    rho = np.corrcoef(f.T)[0, 1]
    corr = np.corrcoef(v.T)
    tol = 4 / np.sqrt(n)
    assert abs(corr[0, 1] - rho) < tol and abs(corr[2, 3] - rho) < tol
    for i, j in [(0, 2), (0, 3), (1, 2), (1, 3)]:
        assert abs(corr[i, j]) < tol
    assert v.min() == 0.0 and v.max() == 1.0  # clipping puts mass on the ends
    assert 0.15 < np.mean(v[:, 0] == 1.0) < 0.17  # P(N(0,1) > 1) = 0.1587


def test_fixed_factor_batches_fix_that_factor_only():
    ds = get_dataset("correlated_ellipses")
    for k in range(4):
        images, factors = ds.sample_fixed_factor(k, 50, np.random.default_rng(k))
        assert (factors[:, k] == factors[0, k]).all()
        assert all(len(np.unique(factors[:, j])) > 1 for j in range(4) if j != k)
        assert np.array_equal(images, ds.images(factors))


@pytest.mark.parametrize("name", ["correlated_ellipses", "shapes2d"])
def test_pixels_are_the_images_stored_as_uint8(name):
    """pixels() is what metrics read: images() must be exactly pixels / 255, and a fixed-factor draw
    of classes is the same draw as sample_fixed_factor's."""
    ds = get_dataset(name)
    factors = ds.sample_factors(300, np.random.default_rng(2))
    pixels = ds.pixels(factors)
    assert pixels.dtype == np.uint8 and pixels.shape == (300, 1, 64, 64)
    exact = np.divide(pixels, np.float32(255), dtype=np.float32)
    assert np.array_equal(ds.images(factors).view(np.uint32), exact.view(np.uint32))
    images, fixed = ds.sample_fixed_factor(1, 40, np.random.default_rng(9))
    classes = ds.sample_fixed_factor_classes(1, 40, np.random.default_rng(9))
    assert np.array_equal(classes, fixed) and np.array_equal(ds.images(classes), images)
    with pytest.raises(ValueError, match=r"k must be a factor index in \[0, \d\) for .*, got -1"):
        ds.sample_fixed_factor_classes(-1, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"n must be a non-negative integer, got 2.5"):
        ds.sample_fixed_factor_classes(0, 2.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"factors must be an integer array"):
        ds.pixels(np.zeros((2, 3)))


def test_same_seed_same_images():
    ds = get_dataset("correlated_ellipses")
    a = ds.random_images(20, np.random.default_rng(5))
    b = ds.random_images(20, np.random.default_rng(5))
    c = ds.random_images(20, np.random.default_rng(6))
    assert a.shape == (20, 1, 64, 64) and a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, c)
    m1, m2 = ds.materialise(300, seed=3), ds.materialise(300, seed=3)
    assert m1.num_images == 300 and np.array_equal(m1.uint8_array(), m2.uint8_array())
    assert np.array_equal(m1.images_at([0, 5]), ds.images(m1.factors[[0, 5]]))


def test_published_npz_loader(tmp_path):
    imgs = ce.render(ce.sample_values(10, np.random.default_rng(0)))
    np.savez_compressed(tmp_path / "ellipses.npz", dataset=imgs)
    ds = get_dataset("correlated_ellipses", tmp_path / "ellipses.npz")
    assert ds.num_images == 10 and np.array_equal(ds.uint8_array()[:, 0], imgs)
    np.savez(tmp_path / "wrong_key.npz", images=imgs)
    with pytest.raises(DataError, match=r"has no key 'dataset'; its keys are \['images'\]"):
        get_dataset("correlated_ellipses", tmp_path / "wrong_key.npz")
    np.savez(tmp_path / "wrong_shape.npz", dataset=np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"expected images of shape .* got \(4, 32, 32\)"):
        get_dataset("correlated_ellipses", tmp_path / "wrong_shape.npz")
    data = (tmp_path / "ellipses.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated"):
        get_dataset("correlated_ellipses", tmp_path / "truncated.npz")
    with pytest.raises(DataError, match=r"no file at .*missing.npz.*crslab/correlated-ellipses"):
        get_dataset("correlated_ellipses", tmp_path / "missing.npz")


@pytest.mark.parametrize(("values", "match"), [
    (np.zeros((3, 3)), r"values must have shape \(n, 4\), got \(3, 3\)"),
    (np.full((2, 4), 1.5), r"values must lie in \[0, 1\]"),
    (np.full((2, 4), np.nan), r"values must be finite and lie in \[0, 1\], got non-finite entries"),
])
def test_render_bad_values(values, match):
    with pytest.raises(ValueError, match=match):
        ce.render(values)


# ---- shapes2d ----------------------------------------------------------------------------------

def test_shapes2d_factors_change_the_image_as_named():
    ds = Shapes2D()
    base = np.array([[1, 3, 0, 16, 16]])  # ellipse, mid scale, no rotation, centre

    def vary(k, values):
        f = np.repeat(base, len(values), axis=0)
        f[:, k] = values
        return [centroid_and_area(img) for img in ds.images(f)]

    xs = [c[0] for c in vary(3, [0, 8, 16, 24, 31])]
    assert np.all(np.diff(xs) > 5) and xs[-1] - xs[0] > 35  # posX moves the centroid right
    ys = [c[1] for c in vary(4, [0, 8, 16, 24, 31])]
    assert np.all(np.diff(ys) > 5)  # posY moves it down
    areas = [c[2] for c in vary(1, range(6))]
    assert np.all(np.diff(areas) > 0) and areas[-1] > 3 * areas[0]  # scale grows the area
    for shape in range(3):
        f = np.repeat(np.array([[shape, 5, 0, 16, 16]]), 40, axis=0)
        f[:, 2] = np.arange(40)
        rot = [centroid_and_area(img)[2] for img in ds.images(f)]
        assert max(rot) / min(rot) < 1.12  # rotation keeps the area (up to pixels)
    shapes = ds.images(np.array([[s, 5, 0, 16, 16] for s in range(3)]))
    assert not np.array_equal(shapes[0], shapes[1]) and not np.array_equal(shapes[1], shapes[2])
    assert set(np.unique(shapes)) <= {0.0, 1.0}  # binary


def test_shapes2d_factor_sets():
    assert Shapes2D().factor_sizes == (3, 6, 40, 32, 32)
    four = get_dataset("shapes2d", include_shape=False)
    assert four.factor_names == ("scale", "orientation", "posX", "posY")
    images, factors = four.sample_fixed_factor(0, 30, np.random.default_rng(0))
    assert factors.shape == (30, 4) and (factors[:, 0] == factors[0, 0]).all()


def test_dsprites_index_round_trip():
    rng = np.random.default_rng(0)
    classes = np.stack([rng.integers(0, k, 1000) for k in dsp.ALL_FACTOR_SIZES], axis=1)
    index = dsp.classes_to_index(classes)
    assert index.min() >= 0 and index.max() < dsp.NUM_IMAGES
    assert np.array_equal(dsp.index_to_classes(index), classes)
    assert dsp.classes_to_index(np.array([[0, 2, 5, 39, 31, 31]]))[0] == dsp.NUM_IMAGES - 1


# ---- dSprites loader, on a scaled-down grid in the official format -----------------------------

@pytest.fixture
def small_dsprites(monkeypatch):
    """The official layout with a 1 x 3 x 2 x 2 x 2 x 2 grid (48 images) instead of 737,280:
    same keys, pickled metadata, index order and 0/1 images."""
    sizes = (1, 3, 2, 2, 2, 2)
    bases = np.cumprod((1,) + sizes[::-1])[::-1][1:].astype(np.int64)
    monkeypatch.setattr(dsp, "ALL_FACTOR_SIZES", sizes)
    monkeypatch.setattr(dsp, "INDEX_BASES", bases)
    monkeypatch.setattr(dsp, "NUM_IMAGES", 48)
    classes = dsp.index_to_classes(np.arange(48))
    imgs = np.zeros((48, 64, 64), np.uint8)
    for i, c in enumerate(classes):  # a pattern that encodes the index
        imgs[i, : i % 64 + 1, : c[1] + 1] = 1
    metadata = {"latents_sizes": np.array(sizes), "latents_names": dsp.ALL_FACTOR_NAMES}
    return imgs, classes, metadata


def write_official_npz(path, imgs, classes, metadata, drop=None):
    arrays = {"imgs": imgs, "latents_classes": classes, "latents_values": classes.astype(np.float64),
              "metadata": np.array(metadata, dtype=object)}
    if drop:
        arrays.pop(drop)
    np.savez_compressed(path, **arrays)


def test_dsprites_npz_and_hdf5(tmp_path, small_dsprites):
    imgs, classes, metadata = small_dsprites
    write_official_npz(tmp_path / "d.npz", imgs, classes, metadata)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["imgs"] = imgs
        f["latents/classes"] = classes
    for path in (tmp_path / "d.npz", tmp_path / "d.h5"):
        ds = get_dataset("dsprites", path)
        assert ds.factor_names == ("shape", "scale", "orientation", "posX", "posY")
        f = classes[[5, 20, 47], 1:]
        assert np.array_equal(ds.images(f)[:, 0], imgs[[5, 20, 47]].astype(np.float32))
        assert ds.uint8_array().shape == (48, 1, 64, 64) and ds.uint8_array().max() == 255
        images, fixed = ds.sample_fixed_factor(2, 16, np.random.default_rng(0))
        assert (fixed[:, 2] == fixed[0, 2]).all()
        assert np.array_equal(images, ds.images(fixed))
    four = get_dataset("dsprites", tmp_path / "d.npz", include_shape=False)
    assert four.factor_sizes == (2, 2, 2, 2)
    assert pickle.loads(pickle.dumps(metadata))["latents_sizes"].tolist() == [1, 3, 2, 2, 2, 2]


def test_dsprites_bad_files(tmp_path, small_dsprites):
    imgs, classes, metadata = small_dsprites
    with pytest.raises(DataError, match=r"no file at .*nothere.npz.*deepmind/dsprites-dataset"):
        get_dataset("dsprites", tmp_path / "nothere.npz")
    with pytest.raises(DataError, match=r"root is required"):
        get_dataset("dsprites")
    write_official_npz(tmp_path / "nometa.npz", imgs, classes, metadata, drop="metadata")
    with pytest.raises(DataError, match=r"has no key 'metadata'"):
        get_dataset("dsprites", tmp_path / "nometa.npz")
    write_official_npz(tmp_path / "shape.npz", imgs[:, :32], classes, metadata)
    with pytest.raises(DataError, match=r"imgs must be uint8 \(48, 64, 64\), got uint8 \(48, 32, 64\)"):
        get_dataset("dsprites", tmp_path / "shape.npz")
    write_official_npz(tmp_path / "dtype.npz", imgs.astype(np.float32), classes, metadata)
    with pytest.raises(DataError, match=r"imgs must be uint8"):
        get_dataset("dsprites", tmp_path / "dtype.npz")
    write_official_npz(tmp_path / "order.npz", imgs, classes[::-1].copy(), metadata)
    with pytest.raises(DataError, match=r"not in the official order"):
        get_dataset("dsprites", tmp_path / "order.npz")
    bad = classes.copy()
    bad[:, 1] = 0
    write_official_npz(tmp_path / "sizes.npz", imgs, bad, metadata)
    with pytest.raises(DataError, match=r"factor sizes must be \(1, 3, 2, 2, 2, 2\), got \(1, 1, 2, 2, 2, 2\)"):
        get_dataset("dsprites", tmp_path / "sizes.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"cannot read .*junk.npz as an npz file"):
        get_dataset("dsprites", tmp_path / "junk.npz")
    with h5py.File(tmp_path / "nokey.h5", "w") as f:
        f["imgs"] = imgs
    with pytest.raises(DataError, match=r"no HDF5 dataset 'latents/classes'"):
        get_dataset("dsprites", tmp_path / "nokey.h5")


# ---- image folders, npz, HDF5 and the face/chair/CelebA presets --------------------------------

def write_images(folder, n, size, color=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, size + ((3,) if color else ()), dtype=np.uint8)
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), img)


def test_folder_presets_and_cache(tmp_path):
    write_images(tmp_path / "celeba", 5, (218, 178))
    cache = tmp_path / "cache"
    celeba = get_dataset("celeba", tmp_path / "celeba", cache_dir=cache)
    assert celeba.uint8_array().shape == (5, 3, 64, 64) and celeba.channels == 3
    raw = cv2.imread(str(tmp_path / "celeba" / "img_000.png"))
    top = (218 - 178) // 2
    crop = cv2.resize(raw[top : top + 178], (64, 64), interpolation=cv2.INTER_AREA)
    assert np.array_equal(celeba.uint8_array()[0], cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).transpose(2, 0, 1))
    assert len(list(cache.glob("celeba-*.npy"))) == 1
    again = get_dataset("celeba", tmp_path / "celeba", cache_dir=cache)
    assert isinstance(again.uint8_array(), np.memmap) and np.array_equal(again.uint8_array(), celeba.uint8_array())
    faces = get_dataset("3dfaces", tmp_path / "celeba", cache_dir=cache)
    assert faces.uint8_array().shape == (5, 1, 64, 64)
    write_images(tmp_path / "chairs", 3, (100, 100))
    assert get_dataset("3dchairs", tmp_path / "chairs", cache_dir=cache).uint8_array().shape == (3, 3, 64, 64)
    assert sorted(p.parent for p in tmp_path.rglob("*.npy")) == [cache] * 3  # nothing written elsewhere


def test_npz_and_hdf5_image_files(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", images=imgs)
    ds = get_dataset("npz", tmp_path / "x.npz")
    assert np.array_equal(ds.uint8_array(), imgs.transpose(0, 3, 1, 2))
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["faces"] = imgs[..., 0].astype(np.float32) / 255
    ds = get_dataset("hdf5", tmp_path / "x.h5", key="faces")
    assert np.array_equal(ds.uint8_array()[:, 0], imgs[..., 0])
    with pytest.raises(DataError, match=r"no HDF5 dataset 'images'; it has \['faces'\]"):
        get_dataset("hdf5", tmp_path / "x.h5")
    with pytest.raises(DataError, match=r"3dfaces: expected 1-channel images, got 3 channels"):
        get_dataset("3dfaces", tmp_path / "x.npz")
    np.savez(tmp_path / "ints.npz", images=imgs.astype(np.int32))
    with pytest.raises(DataError, match=r"expected uint8, bool or float images, got dtype int32"):
        get_dataset("npz", tmp_path / "ints.npz")


def test_bad_folders(tmp_path):
    with pytest.raises(DataError, match=r"celeba: no folder at .*nowhere"):
        get_dataset("celeba", tmp_path / "nowhere", cache_dir=tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no images"):
        get_dataset("folder", tmp_path / "empty", cache_dir=tmp_path / "c")
    write_images(tmp_path / "broken", 2, (64, 64))
    (tmp_path / "broken" / "img_bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"cannot decode .*img_bad.png"):
        get_dataset("folder", tmp_path / "broken", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"color must be 'rgb' or 'gray', got 'cmyk'"):
        get_dataset("folder", tmp_path / "broken", color="cmyk", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match=r"celeba: root is required"):
        get_dataset("celeba")
    with pytest.raises(DataError, match=r"root must be a folder, an .npz or an .h5/.hdf5 file"):
        (tmp_path / "x.txt").write_text("hi")
        get_dataset("npz", tmp_path / "x.txt")


# ---- registry, batches, interface checks, preview ----------------------------------------------

def test_registry_errors():
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'; known datasets: 3dchairs, 3dfaces, celeba"):
        get_dataset("mnist")
    with pytest.raises(DataError, match=r"shapes2d: unknown option\(s\) colour; it accepts: include_shape"):
        get_dataset("shapes2d", colour="red")
    with pytest.raises(DataError, match=r"shapes2d is procedural: it takes no root"):
        get_dataset("shapes2d", "/tmp")
    with pytest.raises(TypeError, match=r"include_shape must be a bool, got str"):
        get_dataset("shapes2d", include_shape="no")


def test_interface_checks():
    ds = Shapes2D()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"factors must be an integer array of shape \(n, 5\) for shapes2d"):
        ds.images(np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match=r"factor 'scale' must be in \[0, 6\), got 6"):
        ds.images(np.array([[0, 6, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"k must be a factor index in \[0, 5\) for shapes2d, got 5"):
        ds.sample_fixed_factor(5, 3, rng)
    with pytest.raises(ValueError, match=r"n must be a non-negative integer, got -1"):
        ds.sample_factors(-1, rng)
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator, got int"):
        ds.sample_factors(3, 0)
    assert ds.sample_fixed_factor(1, 0, rng)[1].shape == (0, 5)


@pytest.mark.parametrize("name", ["shapes2d", "materialised"])
def test_batches(name):
    ds = get_dataset("correlated_ellipses", size=200, seed=0) if name == "materialised" else get_dataset(name)
    it = ds.batches(16, generator=torch.Generator().manual_seed(1))
    a, b = next(it), next(it)
    assert a.shape == (16, 1, 64, 64) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, b)
    again = next(ds.batches(16, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(a, again)
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        next(ds.batches(0))


def test_preview_cli(tmp_path, capsys):
    assert data_cli(["preview", "shapes2d", "--out", str(tmp_path / "g.png"), "--n", "10"]) == 0
    grid = cv2.imread(str(tmp_path / "g.png"))
    assert grid.shape == (3 * 66 + 2, 4 * 66 + 2, 3)
    factors = cv2.imread(str(tmp_path / "g_factors.png"))
    assert factors.shape[0] == 5 * 66 + 2  # one row per factor
    assert data_cli(["preview", "dsprites", "--out", str(tmp_path / "d.png")]) == 2
    assert "root is required" in capsys.readouterr().err


def test_zip_error_type_is_wrapped(tmp_path):
    (tmp_path / "z.npz").write_bytes(zipfile.ZipFile.__doc__.encode())
    with pytest.raises(DataError):
        get_dataset("npz", tmp_path / "z.npz")


def test_shapes2d_materialise_in_dsprites_order(tmp_path, monkeypatch):
    from chyvae_ext.data import shapes2d

    monkeypatch.setattr(shapes2d, "NUM_IMAGES", 200)  # the first 200 of 737,280, same order
    ds = Shapes2D()
    m = ds.materialise(tmp_path / "shapes.npz")
    assert m.num_images == 200 and np.array_equal(m.factors, dsp.index_to_classes(np.arange(200)))
    assert np.array_equal(m.images_at(np.arange(200)), ds.images(m.factors[:, 1:]))
    with np.load(tmp_path / "shapes.npz") as f:
        assert np.array_equal(f["imgs"], m.uint8_array()[:, 0])


def test_default_cache_dir(monkeypatch, tmp_path):
    from chyvae_ext.data.files import default_cache_dir

    monkeypatch.setenv("CHYVAE_EXT_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("CHYVAE_EXT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "chyvae_ext"


def test_procedural_sets_have_no_stored_images():
    with pytest.raises(TypeError, match=r"shapes2d is procedural: it has no stored images to index"):
        Shapes2D().images_at(np.array([0]))
    assert Shapes2D().uint8_array() is None
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got True"):
        next(Shapes2D().batches(True))
