# Evaluates a NixOS configuration that imports nix/module.nix through the real
# nixpkgs lib (lib.evalModules, lib.types: ../shared/vendor/nixpkgs-lib.tar.gz).
#
# Only what other NixOS modules would declare is stubbed: their options (a
# list where NixOS merges lists, free-form elsewhere), and the few pkgs the
# configurations name -- derivations that are never built (no nixpkgs here).
# pkgs.formats.json is shaped as nixpkgs' own (its type is the same
# recursive JSON value type); its generate keeps the text for the test.
{ libPath, configuration }:
let
  lib = import libPath;
  inherit (lib) mkOption types;

  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  pkgs = lib.genAttrs [
    "openvswitch" "lxc" "lxcfs" "vim" "git" "curl" "htop" "iproute2" "nix" "nixos-rebuild" "nixos-install-tools" "coreutils"
  ] fake // {
    callPackage = path: args: fake "op-dbus";
    runCommand = name: env: script: fake name // { inherit env script; };
    formats.json = { }: {
      type =
        let
          valueType = types.nullOr (types.oneOf [
            types.bool types.int types.float types.str types.path
            (types.attrsOf valueType) (types.listOf valueType)
          ]) // { description = "JSON value"; };
        in
        valueType;
      generate = name: value: fake name // { text = builtins.toJSON value; };
    };
  };

  free = mkOption { type = types.lazyAttrsOf types.anything; default = { }; };
  list = mkOption { type = types.listOf types.anything; default = [ ]; };

  otherModules = {
    options = {
      environment.systemPackages = list;
      environment.pathsToLink = list;
      environment.etc = mkOption { type = types.attrsOf types.anything; default = { }; };
      services.dbus.enable = mkOption { type = types.bool; default = false; };
      services.dbus.packages = list;
      security = free;
      users = free;
      systemd = free;
      virtualisation = free;
      networking = free;
      boot = free;
      system = free;
      fileSystems = free;
      swapDevices = list;
      hardware = free;
    };
  };

  evaluated = lib.evalModules {
    modules = [ otherModules configuration ];
    specialArgs = { inherit pkgs; modulesPath = "/nonexistent"; };
  };
  cfg = evaluated.config;
  op = cfg.services.op-dbus;
  etc = cfg.environment.etc;
  state = etc."op-dbus/state.json".source or null;
  service = cfg.systemd.services.op-dbus or null;
  menu = cfg.systemd.services.op-dbus-menu or null;
in
{
  enable = op.enable;
  mode = op.mode;
  configJSON = etc."op-dbus/config.json".text or null;
  # The build-time check: its script, and the document it checks.
  stateCheck = if state == null then null else {
    inherit (state) script;
    text = state.env.document.text;
  };
  service = if service == null then null else service // {
    path = map (p: p.name) service.path;
    restartTriggers = [ ];
  };
  # lib.mkIf, as the module leaves it for NixOS's systemd module to resolve.
  menu = if menu == null || !(menu.condition or true) then null else menu.content or menu;
  systemPackages = map (p: p.name or "?") cfg.environment.systemPackages;
  pathsToLink = cfg.environment.pathsToLink;
  dbusPackages = map (p: p.script) cfg.services.dbus.packages;
  vswitch = cfg.virtualisation.vswitch or { };
  options = map (o: { inherit (o) name type; default = o.default.text or null; })
    (builtins.filter (o: lib.hasPrefix "services.op-dbus." o.name && o.visible && !o.internal)
      (lib.optionAttrSetToDocList evaluated.options));
}
