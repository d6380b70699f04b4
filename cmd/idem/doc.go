// Command idem serves, inspects and exercises an idem ledger.
package main
