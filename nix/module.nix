# NixOS module: services.peer runs the daemon of one home as a hardened system service,
# with its configuration, offer and scheduled backups declared here.
#
# config.toml is written from these options at every start: what `peer schedule add`
# changes at run time lasts until the next restart; declare lasting schedules here.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.peer;
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    types
    ;
  toml = pkgs.formats.toml { };

  scheduleType = types.submodule {
    options = {
      paths = mkOption {
        type = types.listOf types.str;
        description = "Absolute paths to back up.";
        example = [ "/home/alice/photos" ];
      };
      every = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Interval between runs (30m, 1h, 1d). Set this or `cron`.";
      };
      cron = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Cron expression in local time (\"0 3 * * *\": 03:00 daily). Set this or `every`.";
      };
      copies = mkOption {
        type = types.ints.positive;
        default = 3;
        description = "Distinct peers that hold each pack.";
      };
      erasure = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Erasure scheme K+M (e.g. \"4+2\") instead of copies.";
      };
      exclude = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Patterns to leave out (gitignore syntax).";
      };
      lock = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "30d";
        description = "Retention lock of each run's snapshot: providers refuse to delete it before then.";
      };
      keep = mkOption {
        type = types.submodule {
          options = lib.genAttrs [ "last" "daily" "weekly" "monthly" ] (
            rule:
            mkOption {
              type = types.ints.unsigned;
              default = 0;
              description = "Keep the ${rule} snapshots (restic's --keep-${rule}); 0 disables the rule.";
            }
          );
        };
        default = { };
        description = "Retention applied after each run (forget, then prune). None set keeps everything.";
      };
    };
  };

  noNulls = lib.filterAttrs (_: v: v != null);
  schedules = lib.mapAttrsToList (
    name: s:
    noNulls {
      inherit name;
      inherit (s)
        paths
        every
        cron
        copies
        erasure
        exclude
        lock
        keep
        ;
    }
  ) cfg.schedules;

  configFile = toml.generate "peer-config.toml" (
    lib.recursiveUpdate (
      {
        network = {
          inherit (cfg) listen bootstrap mdns;
        };
        hooks = noNulls { after_backup = cfg.afterBackup; };
      }
      // lib.optionalAttrs (schedules != [ ]) { schedule = schedules; }
    ) cfg.settings
  );

  peer = lib.getExe cfg.package;
in
{
  options.services.peer = {
    enable = mkEnableOption "peer, the peer-to-peer backup daemon";

    package = mkOption {
      type = types.package;
      description = "The peer package (the flake's `packages.default`).";
    };

    user = mkOption {
      type = types.str;
      default = "peer";
      description = "User the daemon runs as (created if it is \"peer\").";
    };

    group = mkOption {
      type = types.str;
      default = "peer";
      description = "Group the daemon runs as.";
    };

    home = mkOption {
      type = types.str;
      default = "/var/lib/peer";
      description = "The peer's home: key, config, state, and the packs held for others.";
    };

    offer = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "50GB";
      description = "Disk given to other peers (give to get). null leaves it as `peer offer-storage` set it.";
    };

    port = mkOption {
      type = types.port;
      default = 4001;
      description = "TCP and UDP (QUIC) port of the default listen addresses.";
    };

    listen = mkOption {
      type = types.listOf types.str;
      default = [
        "/ip4/0.0.0.0/tcp/${toString cfg.port}"
        "/ip4/0.0.0.0/udp/${toString cfg.port}/quic-v1"
        "/ip6/::/tcp/${toString cfg.port}"
        "/ip6/::/udp/${toString cfg.port}/quic-v1"
      ];
      defaultText = lib.literalExpression ''[ "/ip4/0.0.0.0/tcp/''${port}" "/ip4/0.0.0.0/udp/''${port}/quic-v1" … ]'';
      description = "Multiaddrs to listen on.";
    };

    bootstrap = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/dns4/peer.example.org/tcp/4001/p2p/12D3KooW…" ];
      description = "Multiaddrs of known peers, each ending in /p2p/<PeerId>.";
    };

    mdns = mkOption {
      type = types.bool;
      default = true;
      description = "Find peers on the local network with mDNS.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` (TCP and UDP) and, with mDNS, UDP 5353.";
    };

    afterBackup = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "curl -fsS https://hc-ping.com/UUID/$([ \"$PEER_RESULT\" = success ] && echo 0 || echo fail)";
      description = "Shell command run after each backup, with the outcome in PEER_* variables (README \"Hooks\").";
    };

    schedules = mkOption {
      type = types.attrsOf scheduleType;
      default = { };
      example = lib.literalExpression ''
        { photos = { paths = [ "/home/alice/photos" ]; every = "6h"; copies = 3; keep = { daily = 7; weekly = 4; }; }; }
      '';
      description = "Backups the daemon runs by itself, by name.";
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      example = {
        network.limit_upload = 2048;
      };
      description = "Other config.toml keys (README \"Configuration\"), merged over the ones above.";
    };
  };

  config = mkIf cfg.enable {
    users.users = lib.optionalAttrs (cfg.user == "peer") {
      peer = {
        isSystemUser = true;
        group = cfg.group;
        home = cfg.home;
      };
    };
    users.groups = lib.optionalAttrs (cfg.group == "peer") { peer = { }; };

    environment.systemPackages = [ cfg.package ];

    networking.firewall = mkIf cfg.openFirewall {
      allowedTCPPorts = [ cfg.port ];
      allowedUDPPorts = [ cfg.port ] ++ lib.optional cfg.mdns 5353;
    };

    systemd.services.peer = {
      description = "peer: peer-to-peer backup daemon";
      documentation = [ "man:peer(1)" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      environment.PEER_HOME = cfg.home;
      path = [ cfg.package ];

      # A new home gets its identity (its recovery phrase: `peer key export --mnemonic`),
      # then the declared configuration and offer.
      preStart = ''
        if [ ! -e ${cfg.home}/identity.key ]; then
          rm -f ${cfg.home}/config.toml
          ${peer} init
        fi
        install -m 0600 ${configFile} ${cfg.home}/config.toml
      ''
      + lib.optionalString (cfg.offer != null) ''
        ${peer} offer-storage ${lib.escapeShellArg cfg.offer}
      '';

      serviceConfig = {
        Type = "notify";
        User = cfg.user;
        Group = cfg.group;
        ExecStart = "${peer} daemon";
        Restart = "on-failure";
        RestartSec = "10s";
        TimeoutStopSec = "60s";
        StateDirectory = lib.mkIf (cfg.home == "/var/lib/peer") "peer";
        StateDirectoryMode = "0700";
        ReadWritePaths = [ cfg.home ];
        UMask = "0077";
        LimitNOFILE = 65536;
        AmbientCapabilities = [ "CAP_DAC_READ_SEARCH" ];
        CapabilityBoundingSet = [ "CAP_DAC_READ_SEARCH" ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = "read-only";
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        RestrictSUIDSGID = true;
        RestrictRealtime = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged @resources"
        ];
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
        ];
      };
    };
  };
}
