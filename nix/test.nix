# NixOS VM test: three machines run services.peer and find each other with mDNS. `client`
# backs up to the other two (2 copies, by a declared schedule run by hand), one of them
# is lost, and the restore from the one left is byte-identical.
#
# Run: nix build .#checks.x86_64-linux.vm  (or: nix flake check)
{ self }:

{
  name = "peer-backup-to-two-lose-one-restore";

  defaults =
    { pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];
      services.peer = {
        enable = true;
        offer = "200MB";
        openFirewall = true;
        mdns = true;
        # The test network uses private addresses, which count as reachable here only.
        settings.network = {
          global_addresses_only = false;
          upnp = false;
        };
        settings.contracts.proposal_wait_secs = 60;
      };
      environment.systemPackages = [ pkgs.jq ];
      environment.variables.PEER_HOME = "/var/lib/peer";
      virtualisation.diskSize = 2048;
    };

  nodes = {
    client = {
      services.peer.schedules.data = {
        paths = [ "/srv/data" ];
        every = "1d";
        copies = 2;
        keep.last = 3;
      };
    };
    provider1 = { };
    provider2 = { };
  };

  testScript = ''
    start_all()
    for m in (client, provider1, provider2):
        m.wait_for_unit("peer.service")

    client.succeed(
        "mkdir -p /srv/data/sub",
        "head -c 20000000 /dev/urandom > /srv/data/random.bin",
        "seq 1 200000 > /srv/data/sub/numbers.txt",
        "ln -s random.bin /srv/data/link",
    )
    for m in (client, provider1, provider2):
        m.wait_until_succeeds("peer status --json | jq -e '(.connected | length) >= 2'", timeout=180)

    client.succeed("peer schedule --json | jq -e '.[0].name == \"data\"'")
    client.succeed("peer schedule run data")
    client.succeed("peer snapshots --json | jq -e 'length == 1'")

    provider1.crash()

    client.succeed("peer restore latest --target /var/lib/peer/restore")
    client.succeed("diff -r --no-dereference /srv/data /var/lib/peer/restore/data")
    client.succeed("peer check")
  '';
}
