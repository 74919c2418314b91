# The peer package: the binary, its shell completions and its man pages.
{
  lib,
  rustPlatform,
  installShellFiles,
}:

let
  manifest = (lib.importTOML ../Cargo.toml).package;
in
rustPlatform.buildRustPackage {
  pname = manifest.name;
  inherit (manifest) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ installShellFiles ];

  # The test suite starts real daemons, and its NAT tests build network namespaces as
  # root: it runs with `bash .ci/run`, not in the build sandbox. The NixOS test
  # (nix/test.nix) exercises the installed package.
  doCheck = false;

  postInstall = ''
    installShellCompletion --cmd peer \
      --bash <($out/bin/peer completions bash) \
      --zsh <($out/bin/peer completions zsh) \
      --fish <($out/bin/peer completions fish)
    mkdir -p man1
    $out/bin/peer man --dir man1
    installManPage man1/*.1
  '';

  meta = {
    description = manifest.description;
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "peer";
    platforms = lib.platforms.linux;
  };
}
