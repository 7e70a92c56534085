# Evaluates nix/module.nix without nixpkgs or its lib: a small stub of the
# `lib` functions the module uses, NixOS-shaped mkIf/mkDefault markers, and
# option values already resolved, as the module system would pass them.
# The fallback for a clone without ../shared; with it, tests/nix/eval-real.nix
# evaluates through the real nixpkgs lib.
{ module, settingsJSON, enable ? true }:
let
  lib = rec {
    mkOption = attrs: attrs;
    mkEnableOption = name: { type = "bool"; default = false; description = "Whether to enable ${name}."; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
    optionals = cond: xs: if cond then xs else [ ];
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
    removePrefix = prefix: s:
      if hasPrefix prefix s
      then builtins.substring (builtins.stringLength prefix) (builtins.stringLength s) s
      else s;
    types = { bool = "bool"; str = "str"; path = "path"; package = "package"; attrs = "attrs"; enum = values: { enum = values; }; };
    mapAttrs = builtins.mapAttrs;
    filterAttrs = pred: set: builtins.removeAttrs set (builtins.filter (n: !(pred n set.${n})) (builtins.attrNames set));
    recursiveUpdate = a: b: a // builtins.mapAttrs (name: value:
      if builtins.isAttrs value && builtins.isAttrs (a.${name} or null)
      then recursiveUpdate a.${name} value else value) b;
  };
  tool = name: "/nix/store/0000-${name}";
  pkgs = {
    callPackage = path: args: throw "the package default must not be forced when package is set";
    runCommand = name: env: script: { inherit name script; outPath = tool name; };
    formats.json = { }: { type = "json"; generate = name: value: builtins.toJSON value; };
    coreutils = tool "coreutils";
    iproute2 = tool "iproute2";
    nix = tool "nix";
    nixos-rebuild = tool "nixos-rebuild";
    nixos-install-tools = tool "nixos-install-tools";
    openvswitch = tool "openvswitch";
    lxc = tool "lxc";
  };
  given = builtins.fromJSON settingsJSON;
  config.services.op-dbus = {
    stateConfig = null;
    enableBlockchain = (given.mode or "full") != "agent";
    enableCache = false;
    menu = { enable = false; autostartTimeout = 10; tty = "tty1"; } // (given.menu or { });
  } // removeAttrs given [ "menu" ] // { inherit enable; package = "/nix/store/0000-op-dbus"; };
  evaluated = import module { inherit lib pkgs config; };
in
{
  inherit (evaluated) config;
  # Nested option sets (menu) by their own options' defaults.
  defaults = builtins.mapAttrs
    (name: option:
      if option ? description then option.default or null
      else builtins.mapAttrs (n: o: o.default or null) option)
    (removeAttrs evaluated.options.services.op-dbus [ "package" ]);
}
