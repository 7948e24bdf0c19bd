"""Plugin manager and registry: built-ins, isolation, duplicates, parameter validation."""

from __future__ import annotations

import json
import types

import pytest
from click.testing import CliRunner

from manet import hookimpl
from manet.cli.main import cli
from manet.errors import PluginError
from manet.plugin_base import Pooling
from manet.plugin_manager import Registry, make_plugin_manager
from manet.settings import Settings


def test_builtins_listed_as_json():
    result = CliRunner().invoke(cli, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    plugins = json.loads(result.output)
    by_kind: dict[str, set[str]] = {}
    for plugin in plugins:
        assert {"name", "kind", "version", "distribution", "description"} <= set(plugin)
        by_kind.setdefault(plugin["kind"], set()).add(plugin["name"])
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "vgg16"} <= by_kind["backbone"]
    assert {"mac", "spoc", "gem", "rmac", "ramac", "srmac"} <= by_kind["pooling"]
    assert {"folder", "manifest", "grocery-store"} <= by_kind["dataset"]
    assert "spectral-residual" in by_kind["saliency_estimator"]
    assert all(p["distribution"] == "manet-retrieval" for p in plugins if p["source"].startswith("manet."))


class Twice(Pooling):
    name = "mac"
    description = "clashes with the built-in MAC"


def _module_registering(cls):
    module = types.SimpleNamespace()

    @hookimpl
    def register_poolings(register):
        register(cls)

    module.register_poolings = register_poolings
    return module


def test_duplicate_name_names_both_sources():
    pm = make_plugin_manager(load_entrypoints=False, extra_plugins=[_module_registering(Twice)])
    with pytest.raises(PluginError, match=r"duplicate pooling 'mac'.*manet\.plugins\.poolings"):
        Registry(pm)


def test_managers_are_isolated():
    class Extra(Pooling):
        name = "extra-pool"
        description = "test only"

    with_extra = Registry(make_plugin_manager(load_entrypoints=False, extra_plugins=[_module_registering(Extra)]))
    plain = Registry(make_plugin_manager(load_entrypoints=False))
    assert "extra-pool" in with_extra.names("pooling")
    assert "extra-pool" not in plain.names("pooling")


def test_unknown_plugin_lists_known_ones():
    registry = Registry(make_plugin_manager(load_entrypoints=False))
    with pytest.raises(PluginError, match=r"unknown pooling 'nope'; known: .*mac"):
        registry.create("pooling", "nope")


def test_parameters_are_validated_and_coerced():
    registry = Registry(make_plugin_manager(load_entrypoints=False))
    gem = registry.create("pooling", "gem", p="4")
    assert gem.params["p"] == 4.0
    with pytest.raises(PluginError, match="has no parameter colour"):
        registry.create("pooling", "gem", colour="red")
    with pytest.raises(PluginError, match="should be a finite float"):
        registry.create("pooling", "gem", p="high")
    # nan passes a check such as `p <= 0`; inf would overflow the pooling.
    for bad in ("nan", "inf", "-inf", float("nan"), True):
        with pytest.raises(PluginError, match=r"parameter p=.* should be a finite float \(default 3.0\)"):
            registry.create("pooling", "gem", p=bad)
    assert registry.create("pooling", "gem", p=2).params["p"] == 2.0


def test_wrong_base_class_is_rejected():
    class NotAPlugin:
        name = "x"

    pm = make_plugin_manager(load_entrypoints=False, extra_plugins=[_module_registering(NotAPlugin)])
    with pytest.raises(PluginError, match="must subclass manet.plugin_base.Pooling"):
        Registry(pm)


def test_typo_in_hook_name_is_caught():
    module = types.SimpleNamespace()

    @hookimpl
    def register_poolingz(register):
        pass

    module.register_poolingz = register_poolingz
    with pytest.raises(Exception, match="unknown hook"):
        make_plugin_manager(load_entrypoints=False, extra_plugins=[module])


def test_load_plugins_env_empty_loads_only_builtins():
    pm = make_plugin_manager(allowed=Settings.from_environment({"MANET_LOAD_PLUGINS": ""}).load_plugins)
    names = {name for name, _ in pm.list_name_plugin()}
    assert all(name.startswith("manet.plugins.") for name in names)


def test_kinds_are_declared_once_and_create_is_typed_by_kind():
    import typing

    from manet import hookspecs
    from manet.plugin_base import BASE_CLASSES, KINDS, PLUGIN_KINDS
    from manet.plugin_manager import REGISTRY_HOOKS

    assert KINDS == tuple(kind.base.kind for kind in PLUGIN_KINDS)
    assert BASE_CLASSES == {kind.name: kind.base for kind in PLUGIN_KINDS}
    assert REGISTRY_HOOKS == {kind.hook: kind.name for kind in PLUGIN_KINDS}
    for kind in PLUGIN_KINDS:  # a real pluggy hookspec, an attribute of manet.hookspecs
        spec = getattr(hookspecs, kind.hook)
        assert spec.__name__ == kind.hook and hasattr(spec, "manet_spec") and kind.base.__name__ in spec.__doc__
    returns = {}
    for overload in typing.get_overloads(Registry.create):
        hints = typing.get_type_hints(overload)
        if typing.get_origin(hints["kind"]) is typing.Literal:
            returns[typing.get_args(hints["kind"])[0]] = hints["return"]
    assert returns == BASE_CLASSES
    registry = Registry(make_plugin_manager(load_entrypoints=False))
    assert isinstance(registry.create("pooling", "gem"), Pooling)


def test_manager_records_loading_in_a_typed_place():
    from manet.plugin_manager import ManetPluginManager, PluginManagerInfo

    pm = make_plugin_manager(load_entrypoints=False)
    assert isinstance(pm, ManetPluginManager) and isinstance(pm.manet_info, PluginManagerInfo)
    assert Registry(pm).failed == {} and pm.manet_info.dists == {}


def test_one_lookup_over_several_kinds():
    registry = Registry(make_plugin_manager(load_entrypoints=False))
    assert registry.find(("reranker", "catalogue_augmenter"), "dba").kind == "catalogue_augmenter"
    assert registry.find(("reranker", "catalogue_augmenter"), "aqe").kind == "reranker"
    with pytest.raises(PluginError, match=r"unknown reranker 'x'; known: alpha-qe, aqe, dba \(see"):
        registry.find(("reranker", "catalogue_augmenter"), "x")
    with pytest.raises(PluginError, match="unknown plugin kind 'rerankers'; known: backbone, "):
        registry.find(("rerankers",), "aqe")
