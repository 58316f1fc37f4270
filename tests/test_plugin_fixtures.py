"""Fixtures: cem, cem_settings, cem_device, cem_patches, cem_images, cem_baseline."""

from __future__ import annotations

import numpy as np

from plugin_inner import make_suite

pytest_plugins = ["pytester"]


def test_cem_runs_the_engine_with_the_resolved_settings(pytester):
    make_suite(pytester, """
        @pytest.mark.cem(**TINY, seed=3)
        def test_map(cem, cem_patches):
            model = ConvStack((1, 1))
            r = cem(model, IMG)
            direct = cc.compute_cem(model, IMG, **TINY, seed=3, mode="paper", patches=cem_patches, progress=False)
            assert (r.seed, r.mode, r.block_size, r.device) == (3, "paper", 4, "cpu")   # marker, CLI, marker
            assert np.array_equal(r.effect, direct.effect) and np.array_equal(r.support, direct.support)
            assert cc.support_radius(r) == 2                                          # radius 2 px, exact in pixels
            other = cem(model, IMG, seed=5)                                           # the call wins
            assert other.seed == 5 and cem.results == [r, other]

        def test_task_is_required(cem):
            with pytest.raises(cc.errors.SettingsError, match=r"cem\\(\\.\\.\\.\\) needs task.*@pytest.mark.cem\\(task='dn50'\\)"):
                cem(ConvStack((1, 1)), IMG, roi=(8, 8, 8))
            with pytest.raises(cc.errors.SettingsError, match="unknown keyword colour; allowed: batch_size"):
                cem(ConvStack((1, 1)), IMG, colour=1)
    """)
    pytester.runpytest("--cem-mode", "paper").assert_outcomes(passed=2)


def test_cem_device_skips_when_the_device_is_absent(pytester):
    make_suite(pytester, """
        @pytest.mark.cem(device="cuda:63")
        def test_gpu(cem):
            raise RuntimeError("never reached")

        def test_default(cem_device):
            assert cem_device.type == "cpu"
    """)
    result = pytester.runpytest("--cem-device", "cpu", "-rs")
    result.assert_outcomes(skipped=1, passed=1)
    result.stdout.fnmatch_lines(["*cem device 'cuda:63' is not available*"])


def test_cem_patches_and_cem_images(pytester):
    bank = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.save(pytester.path / "bank.npy", bank)
    make_suite(pytester, """
        def test_bank(cem_patches):
            assert len(cem_patches) == 20 and cem_patches.patch_shape == (8, 8)
            assert np.array_equal(cem_patches.patches.permute(0, 2, 3, 1).numpy(), np.load("bank.npy"))

        def test_images(cem_images):
            assert sorted(cem_images) == ["astronaut", "chelsea", "coffee", "rocket"]
            assert all(p.is_file() for p in cem_images.values())
            assert cc.load_image(cem_images["rocket"]).shape[0] == 3
    """)
    pytester.runpytest("--cem-patches", "bank.npy").assert_outcomes(passed=2)


def test_cem_baseline_is_created_then_matched_then_regenerated(pytester):
    make_suite(pytester, """
        @pytest.mark.cem(**TINY)
        def test_regression(cem, cem_baseline):
            r = cem(ConvStack((1, 1)), IMG)
            cem_baseline(r)
            with pytest.raises(cc.errors.SettingsError, match="already called without a name"):
                cem_baseline(r)
    """)
    first = pytester.runpytest()
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["*no baseline existed*it was created from this map*"])
    stem = pytester.path / "cem_baselines" / "test_suite" / "test_regression"
    assert stem.with_suffix(".npz").is_file() and stem.with_suffix(".json").is_file()
    pytester.runpytest().assert_outcomes(passed=1)
    regen = pytester.runpytest("--cem-regen-all", "--cem-baseline-dir", "elsewhere")
    regen.assert_outcomes(passed=1)
    assert (pytester.path / "elsewhere" / "test_suite" / "test_regression.json").is_file()
