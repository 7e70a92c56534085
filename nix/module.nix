# services.op-dbus: the NixOS module that installs and runs op-dbusd.
#
#   services.op-dbus = {
#     enable = true;
#     mode = "full";                       # agent | standalone | full
#     stateConfig = {                      # the host as a document, applied at boot
#       systemd.units."openvswitch.service" = { enabled = true; active_state = "active"; };
#       net.interfaces = [ { name = "mesh"; ports = [ ]; } ];
#       lxc.containers = [ { id = 100; name = "gateway"; bridge = "mesh"; running = true; } ];
#     };
#     enableBlockchain = true;             # the hash-chained audit log
#     adminGroup = "opdbus";               # members may change things
#     settings.jobs.retention_seconds = 7200;
#   };
#
# The daemon runs as a Type=dbus systemd service owning org.opdbus on the
# system bus; its bus policy (with the admin group filled in) and polkit
# actions are installed from dbus-policy/. `settings` is written to
# /etc/op-dbus/config.json and must match the daemon's config schema
# (daemon/opdbus/config.py): an unknown key stops the daemon at start.
# `stateConfig` is typed (a wrong field fails evaluation with its option
# path), written to /etc/op-dbus/state.json and checked at build time by
# op-dbusd itself (`op-dbusd --check-state`), as nginx checks its config.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.op-dbus;
  json = pkgs.formats.json { };
  inherit (lib) mkOption types;

  # A field left unset (null) is not managed: it is left out of the document.
  unmanaged = type: description: mkOption { type = types.nullOr type; default = null; inherit description; };

  unitType = types.submodule {
    options = {
      enabled = unmanaged types.bool "Started at boot (its [Install] section enabled).";
      active_state = unmanaged (types.enum [ "active" "inactive" ]) "Running or not.";
      masked = unmanaged types.bool "Masked: it cannot be started at all.";
    };
  };

  addressType = types.submodule {
    options = {
      ip = mkOption { type = types.str; description = "An IPv4 address."; };
      prefix = mkOption { type = types.ints.between 0 32; description = "Its prefix length."; };
    };
  };

  interfaceType = types.submodule {
    options = {
      name = mkOption { type = types.str; description = "The Open vSwitch bridge."; };
      type = mkOption { type = types.enum [ "ovs-bridge" ]; default = "ovs-bridge"; description = "Only OVS bridges are op-dbus's."; };
      ports = mkOption {
        type = types.listOf (types.either types.str json.type);
        default = [ ];
        description = "Ports: an interface name, or { name; type; tag; trunks; peer; }.";
      };
      ipv4 = unmanaged (types.submodule {
        options = {
          enabled = mkOption { type = types.bool; default = true; description = "Manage the bridge's IPv4."; };
          dhcp = mkOption { type = types.bool; default = false; description = "Get an address by DHCP."; };
          address = mkOption { type = types.listOf addressType; default = [ ]; description = "Static addresses."; };
          gateway = unmanaged types.str "The default route through this bridge.";
        };
      }) "The bridge's own IPv4.";
    };
  };

  containerType = types.submodule {
    options = {
      id = mkOption { type = types.either types.ints.positive types.str; description = "Its id (also its start order; the seed writes \"100\")."; };
      name = mkOption { type = types.str; description = "Its name (and hostname)."; };
      veth = unmanaged types.str "The host side of its veth (default vi<id>).";
      bridge = unmanaged types.str "The OVS bridge it joins.";
      running = unmanaged types.bool "Running or stopped.";
      template = unmanaged (types.enum [ "busybox" "download" ]) "What it is made from (only when created).";
      ipv4 = mkOption { type = types.listOf types.str; default = [ ]; description = "Its addresses (CIDR)."; };
      gateway = unmanaged types.str "Its default gateway.";
      memory = unmanaged types.ints.positive "Memory limit, MiB.";
      cpus = unmanaged types.ints.positive "CPU limit, CPUs.";
      autostart = unmanaged types.bool "Started when op-dbusd first starts after a boot.";
    };
  };

  domainType = types.submodule {
    options = {
      profile = mkOption { type = json.type; description = "The VM's profile (op-dbus's VM profile schema)."; };
      running = unmanaged types.bool "Running or shut down.";
      autostart = unmanaged types.bool "Started by libvirt at boot (default: the profile's).";
    };
  };

  section = options: description: unmanaged (types.submodule { inherit options; }) description;

  stateType = types.submodule {
    options = {
      systemd = section {
        units = mkOption { type = types.attrsOf unitType; default = { }; description = "Units by name."; };
      } "systemd units (every mode).";
      net = section {
        interfaces = mkOption { type = types.listOf interfaceType; default = [ ]; description = "OVS bridges."; };
      } "Open vSwitch bridges (standalone and full modes).";
      lxc = section {
        containers = mkOption { type = types.listOf containerType; default = [ ]; description = "LXC containers."; };
      } "LXC containers (full mode).";
      vms = section {
        domains = mkOption { type = types.listOf domainType; default = [ ]; description = "libvirt VMs."; };
      } "VMs (full mode).";
    };
  };

  # Unset fields out, and the module system's own bookkeeping.
  clean = value:
    if builtins.isAttrs value then
      lib.mapAttrs (_: clean) (lib.filterAttrs (name: v: v != null && name != "_module") value)
    else if builtins.isList value then map clean value
    else value;

  stateFile = json.generate "op-dbus-state.json" (clean cfg.stateConfig);

  # The daemon reads the document as it would at boot; a bad one fails the build.
  checkedState = pkgs.runCommand "op-dbus-state.json"
    { nativeBuildInputs = [ cfg.package ]; document = stateFile; } ''
    op-dbusd --check-state "$document" --mode ${cfg.mode}
    cp "$document" $out
  '';

  # The shipped policy, with the admin group chosen here.
  policy = pkgs.runCommand "op-dbus-policy" { } ''
    mkdir -p $out/share/dbus-1/system.d $out/share/dbus-1/system-services $out/share/polkit-1/actions
    substitute ${../dbus-policy/org.opdbus.conf} $out/share/dbus-1/system.d/org.opdbus.conf \
      --replace 'group="opdbus"' 'group="${cfg.adminGroup}"'
    substitute ${../dbus-policy/org.opdbus.service} $out/share/dbus-1/system-services/org.opdbus.service \
      --replace /usr/bin/op-dbusd ${cfg.package}/bin/op-dbusd
    cp ${../dbus-policy/org.opdbus.policy} $out/share/polkit-1/actions/org.opdbus.policy
  '';

  settings = lib.recursiveUpdate cfg.settings {
    mode = cfg.mode;
    state_dir = cfg.stateDir;
    auth.admin_group = cfg.adminGroup;
    audit.enabled = cfg.enableBlockchain;
    cache.enabled = cfg.enableCache;
    menu.autostart_timeout_seconds = cfg.menu.autostartTimeout;
    state.file = "/etc/op-dbus/state.json";
    # Where this module puts them: `opctl validate` checks they are installed.
    paths.bus_policy = [ "/etc/dbus-1/system.d/org.opdbus.conf" "${policy}/share/dbus-1/system.d/org.opdbus.conf" ];
    paths.polkit_actions = "/run/current-system/sw/share/polkit-1/actions/org.opdbus.policy";
  };
  configJSON = builtins.toJSON settings;

  ovs = cfg.mode != "agent";
  full = cfg.mode == "full";
  backendUnits =
    lib.optionals ovs [ "ovsdb.service" "ovs-vswitchd.service" ]
    ++ lib.optionals full [ "libvirtd.service" ];
in
{
  options.services.op-dbus = {
    enable = lib.mkEnableOption "op-dbus, the hypervisor host daemon on D-Bus (org.opdbus)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The op-dbus package (op-dbusd and opctl).";
    };

    mode = mkOption {
      type = types.enum [ "agent" "standalone" "full" ];
      default = "full";
      description = ''
        Which backends run: agent (D-Bus, systemd), standalone (+ Open vSwitch),
        full (+ LXC and libvirt VMs).
      '';
    };

    stateConfig = mkOption {
      type = types.nullOr stateType;
      default = null;
      example = lib.literalExpression ''{ systemd.units."openvswitch.service" = { enabled = true; active_state = "active"; }; }'';
      description = ''
        The desired state of the host (op-dbus's declarative state document),
        written to /etc/op-dbus/state.json, checked at build time by
        `op-dbusd --check-state`, applied when op-dbusd starts and on reload.
        A section the mode does not serve fails the build.
      '';
    };

    enableBlockchain = mkOption {
      type = types.bool;
      default = cfg.mode != "agent";
      defaultText = lib.literalExpression ''config.services.op-dbus.mode != "agent"'';
      description = "Keep the hash-chained audit log of every change (config audit.enabled).";
    };

    enableCache = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Keep snapshots under <stateDir>/@cache: every state checkpoint, and the
        configuration source tree as it was before each sync overwrote it
        (btrfs read-only snapshots on btrfs, hard-linked trees elsewhere);
        `opctl state checkpoints` lists them, `opctl sync --rollback` puts
        the previous source tree back (config cache.*).
      '';
    };

    adminGroup = mkOption {
      type = types.str;
      default = "opdbus";
      description = "Members may call mutating methods (the bus policy and the daemon both check).";
    };

    stateDir = mkOption {
      type = types.path;
      default = "/var/lib/op-dbus";
      description = "Jobs, checkpoints and the hash-chained audit log.";
    };

    menu = {
      enable = lib.mkEnableOption ''
        the console menu (op-dbus-menu) on a virtual terminal instead of its
        login prompt: VMs live, their actions, More Options; restarted when
        it exits (seed 003, "Boot menu behavior")'';
      autostartTimeout = mkOption {
        type = types.ints.between 0 3600;
        default = 10;
        description = ''
          Seconds the menu counts down before it starts the last-run VM
          (Manager1.LastRunVM) unless a key is pressed; 0 turns it off
          (config menu.autostart_timeout_seconds).
        '';
      };
      tty = mkOption {
        type = types.strMatching "tty[0-9]+";
        default = "tty1";
        description = "The virtual terminal the menu takes over from getty.";
      };
    };

    settings = mkOption {
      type = json.type;
      default = { };
      example = lib.literalExpression ''{ jobs.retention_seconds = 7200; ovsdb.remote = "unix:/run/openvswitch/db.sock"; }'';
      description = ''
        Further settings for /etc/op-dbus/config.json (see daemon/opdbus/config.py),
        deep-merged; the options above win over the same keys here.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    users.groups.${cfg.adminGroup} = { };

    # The policy package too: its share/polkit-1/actions reaches
    # /run/current-system/sw (services.dbus.packages links only share/dbus-1).
    environment.systemPackages = [ cfg.package policy ];
    environment.etc."op-dbus/config.json".text = configJSON;
    environment.etc."op-dbus/state.json" = lib.mkIf (cfg.stateConfig != null) { source = checkedState; };

    services.dbus.packages = [ policy ];
    security.polkit.enable = true;
    # polkit reads actions from the system profile's share/polkit-1/actions.
    environment.pathsToLink = [ "/share/polkit-1/actions" ];

    virtualisation.vswitch.enable = lib.mkIf ovs (lib.mkDefault true);
    virtualisation.lxc.enable = lib.mkIf full (lib.mkDefault true);
    virtualisation.libvirtd.enable = lib.mkIf full (lib.mkDefault true);

    systemd.services.op-dbus = {
      description = "op-dbus hypervisor host daemon";
      wantedBy = [ "multi-user.target" ];
      requires = [ "dbus.service" ];
      wants = [ "polkit.service" ] ++ backendUnits;
      after = [ "dbus.service" "polkit.service" ] ++ backendUnits;
      # What the daemon runs: lxc-* tools, ovs-vsctl for containers' ports,
      # ip, nixos-rebuild and nix for rebuild jobs, nixos-generate-config for
      # Install (systemctl, for its --reboot, is on every unit's path).
      path = [ pkgs.iproute2 pkgs.nix pkgs.nixos-rebuild pkgs.nixos-install-tools ]
        ++ lib.optionals ovs [ pkgs.openvswitch ]
        ++ lib.optionals full [ pkgs.lxc ];
      restartTriggers = [ configJSON ] ++ lib.optionals (cfg.stateConfig != null) [ checkedState ];
      serviceConfig = {
        Type = "dbus";
        BusName = "org.opdbus";
        ExecStart = "${cfg.package}/bin/op-dbusd --bus system --config /etc/op-dbus/config.json";
        # SIGHUP applies /etc/op-dbus/state.json again.
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "on-failure";
        # The daemon interrupts running jobs on SIGTERM and records them.
        TimeoutStopSec = 30;
        # systemd creates the state dir when it lives under /var/lib; elsewhere
        # op-dbusd creates it itself (mode 0750).
        StateDirectory = lib.mkIf (lib.hasPrefix "/var/lib/" cfg.stateDir)
          (lib.removePrefix "/var/lib/" cfg.stateDir);
        StateDirectoryMode = "0750";
        UMask = "0027";

        # Hardening that a daemon driving systemd, netlink, OVS, LXC and
        # libvirt -- and running nixos-rebuild switch -- survives
        # (tests/integration/test_nixos_unit.py runs this unit under a real
        # systemd). Left out on purpose: ProtectSystem, ProtectHostname,
        # RestrictSUIDSGID, NoNewPrivileges and a CapabilityBoundingSet would
        # each break nixos-rebuild's activation (it writes /etc, sets the
        # hostname, makes setuid wrappers) or LXC (nearly every capability).
        ProtectHome = "tmpfs";
        PrivateTmp = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectClock = true;
        RestrictRealtime = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_NETLINK" "AF_INET" "AF_INET6" "AF_PACKET" ];
        # LXC (full mode) writes cgroups and sysctls for its containers; the
        # other modes only read them (systemd does the cgroup work).
        ProtectKernelTunables = lib.mkIf (!full) true;
        ProtectControlGroups = lib.mkIf (!full) true;
      };
    };

    systemd.services.op-dbus-menu = lib.mkIf cfg.menu.enable {
      description = "op-dbus console menu on ${cfg.menu.tty}";
      wantedBy = [ "multi-user.target" ];
      # The terminal is the menu's, not getty's; the daemon it talks to first.
      conflicts = [ "getty@${cfg.menu.tty}.service" ];
      after = [ "getty@${cfg.menu.tty}.service" "op-dbus.service" "systemd-user-sessions.service" ];
      wants = [ "op-dbus.service" ];
      environment.TERM = "linux";
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/op-dbus-menu --bus system";
        StandardInput = "tty";
        StandardOutput = "tty";
        StandardError = "journal";
        TTYPath = "/dev/${cfg.menu.tty}";
        TTYReset = true;
        TTYVHangup = true;
        TTYVTDisallocate = true;
        Restart = "always";
        RestartSec = 1;
      };
    };
  };
}
