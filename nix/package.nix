# op-dbus as a Nix package, built from this repository.
{ lib, python3Packages }:

python3Packages.buildPythonApplication {
  pname = "op-dbus";
  version = "0.1.0";
  pyproject = true;
  src = lib.cleanSource ../.;

  build-system = [ python3Packages.setuptools ];
  # Every runtime dependency of pyproject.toml (tests/unit/test_nix_module.py
  # checks the two lists agree).
  dependencies = with python3Packages; [
    dbus-fast
    pydantic
    ovs
    pyroute2
    libvirt
    aiohttp
    textual
  ];

  postInstall = ''
    mkdir -p $out/share/op-dbus
    cp -r ${../dbus-policy} $out/share/op-dbus/dbus-policy
    # opctl's shell completion, where NixOS links each shell's completions from.
    install -Dm644 ${../clients/opctl/completions/bash/opctl} $out/share/bash-completion/completions/opctl
    install -Dm644 ${../clients/opctl/completions/zsh/_opctl} $out/share/zsh/site-functions/_opctl
    install -Dm644 ${../clients/opctl/completions/fish/opctl.fish} $out/share/fish/vendor_completions.d/opctl.fish
  '';

  meta = {
    description = "One D-Bus daemon that owns a hypervisor host: VMs, OVS bridges, LXC containers, jobs";
    mainProgram = "op-dbusd";
    license = lib.licenses.mit;
  };
}
