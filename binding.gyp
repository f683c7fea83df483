{
  "variables": {
    "with_test_helpers%": "<!(node -p \"+require('fs').existsSync('test/helpers/fsops.c')\")"
  },
  "targets": [
    {
      "target_name": "fusekit",
      "sources": [
        "native/binding.cc",
        "native/creds.cc",
        "native/events.cc",
        "native/filesystems.cc",
        "native/idmap.cc",
        "native/inode_store.cc",
        "native/js_config.cc",
        "native/locks.cc",
        "native/mount_handle.cc",
        "native/open_files.cc",
        "native/overlay.cc",
        "native/overlay_copyup.cc",
        "native/overlay_dir.cc",
        "native/overlay_fh.cc",
        "native/overlay_ns.cc",
        "native/overlay_xattr.cc",
        "native/passthrough.cc",
        "native/policy.cc",
        "native/session.cc",
        "native/stats.cc",
        "native/sys.cc",
        "native/watcher.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!@(node scripts/libfuse-flags.js --cflags | sed 's/^-I//')"
      ],
      "defines": ["FUSE_USE_VERSION=318", "NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=gnu++20", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "libraries": ["<!@(node scripts/libfuse-flags.js --libs)"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    }
  ],
  "conditions": [
    ["with_test_helpers==1", {
      "targets": [
        {
          "target_name": "fsops",
          "type": "executable",
          "sources": ["test/helpers/fsops.c"],
          "defines": ["_GNU_SOURCE"],
          "cflags": ["-Wall", "-Wextra"],
          "conditions": [
            ["OS!='linux'", { "type": "none" }]
          ]
        }
      ]
    }]
  ]
}
