# services.op-dbus: the NixOS module that installs and runs op-dbusd.
#
#   services.op-dbus = {
#     enable = true;
#     mode = "full";                       # agent | standalone | full
#     adminGroup = "opdbus";               # members may change things
#     settings.jobs.retention_seconds = 7200;
#   };
#
# The daemon runs as a Type=dbus systemd service owning org.opdbus on the
# system bus; its bus policy (with the admin group filled in) and polkit
# actions are installed from dbus-policy/. `settings` is written to
# /etc/op-dbus/config.json and must match the daemon's config schema
# (daemon/opdbus/config.py): an unknown key stops the daemon at start.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.op-dbus;

  configJSON = builtins.toJSON (lib.recursiveUpdate cfg.settings {
    mode = cfg.mode;
    state_dir = cfg.stateDir;
    auth.admin_group = cfg.adminGroup;
  });

  # The shipped policy, with the admin group chosen here.
  policy = pkgs.runCommand "op-dbus-policy" { } ''
    mkdir -p $out/share/dbus-1/system.d $out/share/dbus-1/system-services $out/share/polkit-1/actions
    substitute ${../dbus-policy/org.opdbus.conf} $out/share/dbus-1/system.d/org.opdbus.conf \
      --replace 'group="opdbus"' 'group="${cfg.adminGroup}"'
    substitute ${../dbus-policy/org.opdbus.service} $out/share/dbus-1/system-services/org.opdbus.service \
      --replace /usr/bin/op-dbusd ${cfg.package}/bin/op-dbusd
    cp ${../dbus-policy/org.opdbus.policy} $out/share/polkit-1/actions/org.opdbus.policy
  '';
in
{
  options.services.op-dbus = {
    enable = lib.mkEnableOption "op-dbus, the hypervisor host daemon on D-Bus (org.opdbus)";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The op-dbus package (op-dbusd and opctl).";
    };

    mode = lib.mkOption {
      type = lib.types.enum [ "agent" "standalone" "full" ];
      default = "full";
      description = ''
        Which backends run: agent (D-Bus, systemd), standalone (+ Open vSwitch),
        full (+ LXC and libvirt VMs).
      '';
    };

    adminGroup = lib.mkOption {
      type = lib.types.str;
      default = "opdbus";
      description = "Members may call mutating methods (the bus policy and the daemon both check).";
    };

    stateDir = lib.mkOption {
      type = lib.types.path;
      default = "/var/lib/op-dbus";
      description = "Jobs and the hash-chained audit log.";
    };

    settings = lib.mkOption {
      type = lib.types.attrs;
      default = { };
      example = lib.literalExpression ''{ jobs.retention_seconds = 7200; ovsdb.remote = "unix:/run/openvswitch/db.sock"; }'';
      description = "Further settings for /etc/op-dbus/config.json (see daemon/opdbus/config.py).";
    };
  };

  config = lib.mkIf cfg.enable {
    users.groups.${cfg.adminGroup} = { };

    environment.systemPackages = [ cfg.package ];
    environment.etc."op-dbus/config.json".text = configJSON;

    services.dbus.packages = [ policy ];
    security.polkit.enable = true;
    # polkit reads actions from the system profile's share/polkit-1/actions.
    environment.pathsToLink = [ "/share/polkit-1/actions" ];

    virtualisation.vswitch.enable = lib.mkIf (cfg.mode != "agent") (lib.mkDefault true);
    virtualisation.lxc.enable = lib.mkIf (cfg.mode == "full") (lib.mkDefault true);
    virtualisation.libvirtd.enable = lib.mkIf (cfg.mode == "full") (lib.mkDefault true);

    systemd.services.op-dbus = {
      description = "op-dbus hypervisor host daemon";
      wantedBy = [ "multi-user.target" ];
      after = [ "dbus.service" "polkit.service" ]
        ++ lib.optionals (cfg.mode != "agent") [ "ovsdb.service" "ovs-vswitchd.service" ]
        ++ lib.optionals (cfg.mode == "full") [ "libvirtd.service" ];
      restartTriggers = [ configJSON ];
      serviceConfig = {
        Type = "dbus";
        BusName = "org.opdbus";
        ExecStart = "${cfg.package}/bin/op-dbusd --bus system --config /etc/op-dbus/config.json";
        Restart = "on-failure";
        # The daemon interrupts running jobs on SIGTERM and records them.
        TimeoutStopSec = 30;
        # systemd creates the state dir when it lives under /var/lib; elsewhere
        # op-dbusd creates it itself (mode 0750).
        StateDirectory = lib.mkIf (lib.hasPrefix "/var/lib/" cfg.stateDir)
          (lib.removePrefix "/var/lib/" cfg.stateDir);
        StateDirectoryMode = "0750";
        UMask = "0027";
      };
    };
  };
}
