"""PORTING.md lists every public name of braintrace with a status that matches etprop."""

import pathlib
import re

import pytest

import etprop

PORTING = (pathlib.Path(__file__).resolve().parent.parent / "PORTING.md").read_text(encoding="utf-8")


def _table(heading):
    section = PORTING.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \| (same|differs|missing) \|", section, re.MULTILINE)
    return dict(rows)


TOP = _table("## braintrace top-level names")
NN = _table("## braintrace.nn names")


def test_tables_are_not_empty_and_have_no_duplicates():
    assert len(TOP) >= 50 and len(NN) >= 20
    for heading in ("## braintrace top-level names", "## braintrace.nn names"):
        section = PORTING.split(heading, 1)[1].split("\n## ", 1)[0]
        names = re.findall(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \|", section, re.MULTILINE)
        assert len(names) == len(set(names)), heading


@pytest.mark.parametrize("table,module", [("top", etprop), ("nn", etprop.nn)])
def test_status_matches_what_etprop_has(table, module):
    rows = TOP if table == "top" else NN
    for name, status in rows.items():
        present = hasattr(module, name)
        assert present == (status != "missing"), (name, status)


def test_every_braintrace_name_is_listed():
    braintrace = pytest.importorskip("braintrace")  # in the test extra: CI installs it
    public = {n for n in braintrace.__all__ if not n.startswith("__")}
    assert public == set(TOP), (sorted(public - set(TOP)), sorted(set(TOP) - public))
    assert set(braintrace.nn.__all__) == set(NN), (sorted(set(braintrace.nn.__all__) - set(NN)),
                                                   sorted(set(NN) - set(braintrace.nn.__all__)))


def test_compat_names_are_reachable_but_not_public():
    for name in etprop.COMPAT:
        assert getattr(etprop, name) is not None and name not in etprop.__all__, name
    assert etprop.pp_prop is etprop.ES_D_RTRL and etprop.ParamDimVjpAlgorithm is etprop.D_RTRL
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        etprop.NoSuchName


def test_names_braintrace_nn_forwards_are_reachable():
    import warnings
    braintrace = pytest.importorskip("braintrace")
    names = [n for n in dir(braintrace.nn) if not n.startswith("_") and n not in braintrace.nn.__all__]
    assert len(names) >= 50
    for n in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = getattr(braintrace.nn, n)
        ours = getattr(etprop.nn, n)
        if theirs.__module__.split(".")[0] == "brainstate" or n in ("STP", "STD"):
            assert ours is theirs, n
        else:  # etprop's own class of that name (PORTING.md: differs)
            assert n in ("LIF", "ALIF", "IF", "Expon", "Alpha", "DualExpon") and n in etprop.nn.__all__, n
        assert f"`{n}`" in PORTING, n
