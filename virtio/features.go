package virtio

// DeviceType is a virtio device ID (§5).
type DeviceType uint16

// Device types gvmm implements or plans to.
const (
	TypeNet     DeviceType = 1
	TypeBlock   DeviceType = 2
	TypeConsole DeviceType = 3
	TypeEntropy DeviceType = 4
	TypeVsock   DeviceType = 19
)

// Reserved feature bits (§6) this package understands.
const (
	FIndirectDesc uint64 = 1 << 28 // VIRTIO_F_INDIRECT_DESC
	FEventIdx     uint64 = 1 << 29 // VIRTIO_F_EVENT_IDX
	FVersion1     uint64 = 1 << 32 // VIRTIO_F_VERSION_1
)

// transportFeatures are offered for every device on top of its own.
const transportFeatures = FIndirectDesc | FEventIdx | FVersion1

// Device status bits (§2.1).
const (
	StatusAcknowledge      uint8 = 1
	StatusDriver           uint8 = 2
	StatusDriverOK         uint8 = 4
	StatusFeaturesOK       uint8 = 8
	StatusDeviceNeedsReset uint8 = 64
	StatusFailed           uint8 = 128
)

// NoVector is VIRTIO_MSI_NO_VECTOR: no MSI-X vector is assigned.
const NoVector uint16 = 0xffff
