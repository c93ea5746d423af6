package store

import (
	"errors"
	"testing"
)

func TestCheckVersion(t *testing.T) {
	for _, tt := range []struct {
		name, info string
		old        bool
	}{
		{"7.0", "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n", false},
		{"8", "# Server\r\nredis_version:8.0.2\r\n", false},
		{"6.2", "# Server\r\nredis_version:6.2.14\r\n", true},
		{"garbled", "# Server\r\nredis_version:x\r\n", true},
		{"no version (a compatible server)", "# Server\r\nserver_name:other\r\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := checkVersion("127.0.0.1:6379", tt.info)
			if got := errors.Is(err, ErrOldRedis); got != tt.old {
				t.Fatalf("checkVersion = %v; want old %v", err, tt.old)
			}
		})
	}
}
