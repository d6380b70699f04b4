// Package pebblestore is the embedded, durable idem.Store on Pebble.
package pebblestore
